// Command dashlint checks a Grafana dashboard's JSON the way Grafana's
// dashboard-linter does, for the rules this project's dashboard relies on,
// and (with --metrics) prints the metric names every query selects.
//
// Grafana's own linter is not used: its module is not served by the module
// proxy the build uses. This command reads the dashboard with the Grafana
// Foundation SDK's types (Apache-2.0) and parses every query with
// Prometheus's own PromQL parser, so a query passes only if Prometheus
// itself would accept it.
//
// Usage: dashlint [--metrics] dashboard.json
//
// Each finding is printed as `<rule>: <panel>: <message>` on stderr; the exit
// status is 1 if there is any, 2 if the file cannot be read as a dashboard.
// With --metrics, every selected metric is printed on stdout as
// `<metric>\t<panel title>\t<refId>`, one per line.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// Grafana's built-in interval variables are replaced by these distinct,
// unusual durations before parsing, so the parsed ranges show which one a
// query used.
const (
	rateInterval = time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond
	interval     = time.Hour + 2*time.Minute + 3*time.Second + 5*time.Millisecond
	rangeVar     = time.Hour + 2*time.Minute + 3*time.Second + 6*time.Millisecond
)

// The functions whose range should be `$__rate_interval`.
var rateFunctions = map[string]bool{"rate": true, "irate": true, "increase": true}

// The panel types that show numbers and so need a unit.
var unitPanels = map[string]bool{"timeseries": true, "stat": true}

// `$name`, `${name}`, `${name:format}` and `[[name]]`.
var variableRef = regexp.MustCompile(`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]`)

type finding struct {
	rule, panel, message string
}

type selected struct {
	metric, panel, refID string
}

type linter struct {
	findings []finding
	metrics  []selected
	// Template variables of type `interval`: replaced by a duration.
	intervalVars map[string]bool
}

func (l *linter) report(rule, panel, format string, args ...any) {
	l.findings = append(l.findings, finding{rule, panel, fmt.Sprintf(format, args...)})
}

func main() {
	printMetrics := flag.Bool("metrics", false, "print the metric names every query selects")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: dashlint [--metrics] dashboard.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	var dash dashboard.Dashboard
	if err := json.Unmarshal(raw, &dash); err != nil {
		fmt.Fprintf(os.Stderr, "%s: not a Grafana dashboard: %v\n", flag.Arg(0), err)
		os.Exit(2)
	}
	l := &linter{intervalVars: map[string]bool{}}
	l.lint(&dash)
	sort.SliceStable(l.findings, func(i, j int) bool { return l.findings[i].panel < l.findings[j].panel })
	for _, f := range l.findings {
		fmt.Fprintf(os.Stderr, "%s: %s: %s\n", f.rule, f.panel, f.message)
	}
	if *printMetrics {
		for _, m := range l.metrics {
			fmt.Printf("%s\t%s\t%s\n", m.metric, m.panel, m.refID)
		}
	}
	if len(l.findings) > 0 {
		os.Exit(1)
	}
}

func (l *linter) lint(dash *dashboard.Dashboard) {
	l.lintTemplating(dash.Templating.List)
	// dashboard-linter's template-job-rule and template-instance-rule (a
	// `job` and an `instance` variable) are left out: they suit dashboards
	// of one scrape job, while this one spans the gateway and the operator.
	var panels []dashboard.Panel
	for i, p := range dash.Panels {
		switch {
		case p.Panel != nil:
			panels = append(panels, *p.Panel)
		case p.RowPanel != nil:
			panels = append(panels, p.RowPanel.Panels...)
		default:
			l.report("panel-type", fmt.Sprintf("panels[%d]", i), "has no type")
		}
	}
	ids := map[uint32]string{}
	for i, p := range panels {
		name := fmt.Sprintf("panels[%d]", i)
		if p.Title != nil && strings.TrimSpace(*p.Title) != "" {
			name = *p.Title
		} else {
			l.report("panel-title", name, "has no title")
		}
		if p.Description == nil || strings.TrimSpace(*p.Description) == "" {
			l.report("panel-description", name, "has no description")
		}
		if p.Id == nil {
			l.report("panel-id-unique", name, "has no id")
		} else if other, seen := ids[*p.Id]; seen {
			l.report("panel-id-unique", name, "id %d is also the id of %q", *p.Id, other)
		} else {
			ids[*p.Id] = name
		}
		if unitPanels[p.Type] && (p.FieldConfig == nil || p.FieldConfig.Defaults.Unit == nil ||
			*p.FieldConfig.Defaults.Unit == "") {
			l.report("panel-units", name, "a %s panel without fieldConfig.defaults.unit", p.Type)
		}
		if !usesDatasourceVariable(p.Datasource) {
			l.report("panel-datasource", name, "datasource %s is not the ${datasource} variable", describe(p.Datasource))
		}
		if len(p.Targets) == 0 {
			l.report("panel-targets", name, "has no queries")
		}
		for j, t := range p.Targets {
			query, ok := t.(*prometheus.Dataquery)
			if !ok {
				l.report("target-prometheus", name, "targets[%d] is a %s query, not a Prometheus one", j, t.DataqueryType())
				continue
			}
			refID := fmt.Sprintf("targets[%d]", j)
			if query.RefId != nil && *query.RefId != "" {
				refID = *query.RefId
			}
			if query.Datasource != nil && !usesDatasourceVariable(query.Datasource) {
				l.report("target-datasource", name, "%s: datasource %s is not the ${datasource} variable", refID, describe(query.Datasource))
			}
			l.lintExpr(name, refID, query.Expr)
		}
	}
}

// The dashboard-linter's template-datasource-rule: a `datasource` variable
// of type `datasource` that lists the Prometheus data sources.
func (l *linter) lintTemplating(vars []dashboard.VariableModel) {
	found := false
	for _, v := range vars {
		if v.Type == "interval" {
			l.intervalVars[v.Name] = true
		}
		if v.Name != "datasource" {
			continue
		}
		found = true
		query := ""
		if v.Query != nil && v.Query.String != nil {
			query = *v.Query.String
		}
		if v.Type != "datasource" || query != "prometheus" {
			l.report("template-datasource", "templating", "variable datasource is of type %q with query %q; want type \"datasource\" and query \"prometheus\"", v.Type, query)
		}
	}
	if !found {
		l.report("template-datasource", "templating", "no datasource variable")
	}
}

func (l *linter) lintExpr(panel, refID, expr string) {
	if strings.TrimSpace(expr) == "" {
		l.report("target-promql", panel, "%s: empty expr", refID)
		return
	}
	// The options of a Prometheus server started without feature flags.
	parsed, err := parser.NewParser(parser.Options{}).ParseExpr(l.substitute(expr))
	if err != nil {
		l.report("target-promql", panel, "%s: %q does not parse: %v", refID, expr, err)
		return
	}
	seen := map[string]bool{}
	parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			name := n.Name
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				l.report("target-metric-name", panel, "%s: a selector without a metric name: %s", refID, n)
			} else if !seen[name] {
				seen[name] = true
				l.metrics = append(l.metrics, selected{name, panel, refID})
			}
		case *parser.Call:
			if !rateFunctions[n.Func.Name] || len(n.Args) == 0 {
				break
			}
			if m, ok := n.Args[0].(*parser.MatrixSelector); ok && m.Range != rateInterval {
				l.report("target-rate-interval", panel, "%s: %s() over %s, not $__rate_interval", refID, n.Func.Name, describeRange(m.Range))
			}
		}
		return nil
	})
}

// substitute replaces Grafana's interval variables by their sentinel
// durations and every other template variable by a literal.
func (l *linter) substitute(expr string) string {
	builtins := map[string]time.Duration{
		"__rate_interval": rateInterval,
		"__interval":      interval,
		"__range":         rangeVar,
	}
	return variableRef.ReplaceAllStringFunc(expr, func(ref string) string {
		groups := variableRef.FindStringSubmatch(ref)
		name := groups[1] + groups[2] + groups[3]
		if d, ok := builtins[name]; ok {
			return formatDuration(d)
		}
		if l.intervalVars[name] {
			return "5m"
		}
		return "value"
	})
}

func formatDuration(d time.Duration) string {
	return fmt.Sprintf("%dh%dm%ds%dms", d/time.Hour, d%time.Hour/time.Minute, d%time.Minute/time.Second, d%time.Second/time.Millisecond)
}

func describeRange(d time.Duration) string {
	switch d {
	case interval:
		return "$__interval"
	case rangeVar:
		return "$__range"
	}
	return "[" + d.String() + "]"
}

func usesDatasourceVariable(ref *common.DataSourceRef) bool {
	return ref != nil && ref.Uid != nil && (*ref.Uid == "${datasource}" || *ref.Uid == "$datasource")
}

func describe(ref *common.DataSourceRef) string {
	if ref == nil {
		return "(none)"
	}
	out, _ := json.Marshal(ref)
	return string(out)
}
