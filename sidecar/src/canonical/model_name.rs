//! Model names as each engine reads them, and the patterns rules and quotas
//! match them with.
//!
//! **Ollama** parses a name with its own grammar (`types/model/name.go`):
//! `[scheme://][host/][namespace/]model[:tag]`, where a missing host is
//! `registry.ollama.ai`, a missing namespace `library` and a missing tag
//! `latest`; the scheme is dropped; each part has its own character set and
//! length; and installed models are found without regard to case. So
//! `tinyllama`, `TinyLlama:latest`, `library/tinyllama` and
//! `https://registry.ollama.ai/library/tinyllama:latest` are one model. The
//! canonical name is Ollama's shortest display form, in lower case:
//! `tinyllama:latest`, `namespace/model:tag`, `host/namespace/model:tag`.
//!
//! **vLLM and other OpenAI-compatible servers** compare the name exactly
//! with the names they serve, so the canonical name is the name itself. It
//! must be printable text without surrounding whitespace.
//!
//! Every engine: at most [`MAX_NAME_BYTES`] bytes.
//!
//! **Patterns.** For Ollama a pattern is read like a name, with `*` and `?`
//! allowed in any part, its missing parts take the same defaults, and each
//! part is matched on its own: a `*` never crosses a `/` or the `:` before
//! the tag. So `tinyllama*` is `registry.ollama.ai/library/tinyllama*:latest`
//! (write `tinyllama*:*` for every tag), `*:1b` is every `library` model
//! tagged `1b`, `*/*:*` every model of the default registry, and `*` alone
//! every model. For the other engines a pattern is a glob over the exact
//! name.

use std::sync::Arc;

use wildmatch::WildMatch;

use super::Engine;

/// The longest model name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// Why a model name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the model name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("the model name {name:?} is not a valid model name: {reason}")]
    Invalid { name: String, reason: &'static str },
}

/// A model name in its engine's canonical form. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(Arc<str>);

impl ModelName {
    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canonical form of `raw` for `engine`, or why it is refused.
pub fn canonical_name(engine: Engine, raw: &str) -> Result<ModelName, NameError> {
    if raw.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    let invalid = |reason| NameError::Invalid {
        name: raw.chars().take(64).collect(),
        reason,
    };
    match engine {
        Engine::Ollama => {
            let parts = OllamaParts::parse(raw, false).map_err(invalid)?;
            Ok(ModelName(Arc::from(parts.display())))
        }
        Engine::Vllm | Engine::Openai => {
            if raw.is_empty() {
                return Err(invalid("it is empty"));
            }
            if raw.chars().any(char::is_control) {
                return Err(invalid("it holds a control character"));
            }
            if raw.trim() != raw {
                return Err(invalid("it starts or ends with white space"));
            }
            Ok(ModelName(Arc::from(raw)))
        }
        Engine::Mcp => {
            let (_, rest) = mcp_target(raw).ok_or_else(|| {
                invalid("an MCP target is tool:<name>, resource:<uri> or prompt:<name>")
            })?;
            if rest.is_empty() {
                return Err(invalid("it names no tool, resource or prompt"));
            }
            if rest.chars().any(char::is_control) {
                return Err(invalid("it holds a control character"));
            }
            if rest.trim() != rest {
                return Err(invalid("it starts or ends with white space"));
            }
            Ok(ModelName(Arc::from(raw)))
        }
    }
}

/// The kinds of target an MCP message names, as the prefixes of their
/// canonical names.
pub const MCP_TARGET_KINDS: [&str; 3] = ["tool:", "resource:", "prompt:"];

/// `(kind prefix, rest)` of an MCP target name or pattern.
fn mcp_target(raw: &str) -> Option<(&'static str, &str)> {
    MCP_TARGET_KINDS
        .iter()
        .find_map(|kind| raw.strip_prefix(kind).map(|rest| (*kind, rest)))
}

/// The four parts of an Ollama name, as written (defaults filled in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OllamaParts<'a> {
    host: &'a str,
    namespace: &'a str,
    model: &'a str,
    tag: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Host,
    Namespace,
    Model,
    Tag,
}

impl<'a> OllamaParts<'a> {
    /// Ollama's `ParseName` then `IsValid`; with `glob`, `*` and `?` are
    /// allowed in every part (for patterns).
    fn parse(raw: &'a str, glob: bool) -> Result<Self, &'static str> {
        // `ParseNameBare`: the tag is after the last ':' if that comes after
        // the last '/'; then model, namespace and host are cut at '/' from
        // the right; a part promised by a separator but empty is invalid.
        let mut s = raw;
        let mut tag = None;
        if s.rfind(':').map(|i| i as isize).unwrap_or(-1)
            > s.rfind('/').map(|i| i as isize).unwrap_or(-1)
        {
            let (before, after) = cut_last(s, ':').ok_or("it is not a name")?;
            s = before;
            tag = Some(after);
        }
        let (mut host, namespace, model) = match cut_last(s, '/') {
            None => (None, None, s),
            Some((rest, model)) => match cut_last(rest, '/') {
                None => (None, Some(rest), model),
                Some((host, namespace)) => (Some(host), Some(namespace), model),
            },
        };
        if let Some(h) = host {
            // `scheme://host`: the scheme is dropped.
            if let Some((_, after)) = h.split_once("://") {
                host = Some(after);
            }
        }
        for (part, value) in [
            (Part::Host, host),
            (Part::Namespace, namespace),
            (Part::Model, Some(model)),
            (Part::Tag, tag),
        ] {
            if let Some(value) = value {
                check_part(part, value, glob)?;
            }
        }
        Ok(Self {
            host: host.unwrap_or(DEFAULT_HOST),
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE),
            model,
            tag: tag.unwrap_or(DEFAULT_TAG),
        })
    }

    /// Ollama's `DisplayShortest`, in lower case (one allocation).
    fn display(&self) -> String {
        let mut out = String::with_capacity(
            self.host.len() + self.namespace.len() + self.model.len() + self.tag.len() + 3,
        );
        let mut push = |s: &str| out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
        if !self.host.eq_ignore_ascii_case(DEFAULT_HOST) {
            push(self.host);
            push("/");
            push(self.namespace);
            push("/");
        } else if !self.namespace.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
            push(self.namespace);
            push("/");
        }
        push(self.model);
        push(":");
        push(self.tag);
        out
    }

    /// Splits a canonical display form back into its parts (no checks).
    fn of_canonical(name: &'a str) -> Self {
        let (rest, tag) = name.rsplit_once(':').unwrap_or((name, DEFAULT_TAG));
        let (host, namespace, model) = match rest.rsplit_once('/') {
            None => (DEFAULT_HOST, DEFAULT_NAMESPACE, rest),
            Some((before, model)) => match before.rsplit_once('/') {
                None => (DEFAULT_HOST, before, model),
                Some((host, namespace)) => (host, namespace, model),
            },
        };
        Self {
            host,
            namespace,
            model,
            tag,
        }
    }
}

fn cut_last(s: &str, sep: char) -> Option<(&str, &str)> {
    s.rfind(sep).map(|i| (&s[..i], &s[i + sep.len_utf8()..]))
}

/// Ollama's `isValidPart`, plus `*`/`?` for patterns.
fn check_part(part: Part, s: &str, glob: bool) -> Result<(), &'static str> {
    let max = if part == Part::Host { 350 } else { 80 };
    if s.is_empty() {
        return Err("a part of it is empty");
    }
    if s.len() > max {
        return Err("a part of it is too long");
    }
    let is_glob = |c: u8| glob && matches!(c, b'*' | b'?');
    for (i, c) in s.bytes().enumerate() {
        let ok = c.is_ascii_alphanumeric()
            || c == b'_'
            || is_glob(c)
            || (i > 0
                && match c {
                    b'-' => true,
                    b'.' => part != Part::Namespace,
                    b':' => part == Part::Host,
                    _ => false,
                });
        if !ok {
            return Err(match part {
                Part::Host => "its host has a character Ollama does not allow",
                Part::Namespace => "its namespace has a character Ollama does not allow",
                Part::Model => "it has a character Ollama does not allow",
                Part::Tag => "its tag has a character Ollama does not allow",
            });
        }
    }
    Ok(())
}

/// A compiled model pattern from a rule or a quota limit.
#[derive(Debug, Clone)]
pub enum ModelPattern {
    /// `*`: every model.
    Any,
    /// An Ollama pattern, matched part by part.
    Ollama(Box<[WildMatch; 4]>),
    /// A glob over the exact name (OpenAI-compatible engines).
    Exact(WildMatch),
}

impl ModelPattern {
    /// Compiles `pattern` for `engine`; the error says why it cannot match
    /// any name.
    pub fn parse(engine: Engine, pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        if pattern.is_empty()
            || pattern.len() > MAX_NAME_BYTES
            || pattern.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "model pattern {pattern:?} is not a valid name or glob"
            ));
        }
        match engine {
            Engine::Ollama => {
                let parts = OllamaParts::parse(pattern, true).map_err(|reason| {
                    format!("model pattern {pattern:?} is not an Ollama name or glob: {reason}")
                })?;
                let glob = |s: &str| WildMatch::new(&s.to_ascii_lowercase());
                Ok(Self::Ollama(Box::new([
                    glob(parts.host),
                    glob(parts.namespace),
                    glob(parts.model),
                    glob(parts.tag),
                ])))
            }
            Engine::Vllm | Engine::Openai => Ok(Self::Exact(WildMatch::new(pattern))),
            // Case-sensitive, as MCP names are; the kind is never a glob, so
            // `tool:*` cannot match a resource.
            Engine::Mcp => match mcp_target(pattern) {
                Some((_, rest)) if !rest.is_empty() => Ok(Self::Exact(WildMatch::new(pattern))),
                _ => Err(format!(
                    "pattern {pattern:?} is not an MCP target glob: tool:<glob>, resource:<glob> or prompt:<glob>"
                )),
            },
        }
    }

    /// Whether the canonical name `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(glob) => glob.matches(name),
            Self::Ollama(globs) => {
                let parts = OllamaParts::of_canonical(name);
                globs[0].matches(parts.host)
                    && globs[1].matches(parts.namespace)
                    && globs[2].matches(parts.model)
                    && globs[3].matches(parts.tag)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ollama(raw: &str) -> Result<String, NameError> {
        canonical_name(Engine::Ollama, raw).map(|n| n.to_string())
    }

    #[test]
    fn one_ollama_model_has_one_name() {
        for raw in [
            "tinyllama",
            "tinyllama:latest",
            "TinyLlama",
            "TINYLLAMA:LATEST",
            "library/tinyllama",
            "registry.ollama.ai/library/tinyllama:latest",
            "REGISTRY.OLLAMA.AI/Library/tinyllama",
            "https://registry.ollama.ai/library/tinyllama:latest",
            "http://registry.ollama.ai/library/tinyllama",
        ] {
            assert_eq!(ollama(raw).as_deref(), Ok("tinyllama:latest"), "{raw}");
        }
        assert_eq!(ollama("llama3.2:1b").as_deref(), Ok("llama3.2:1b"));
        assert_eq!(
            ollama("tinyllama/big").as_deref(),
            Ok("tinyllama/big:latest")
        );
        assert_eq!(
            ollama("hf.co/Org/Model-GGUF:Q4_K_M").as_deref(),
            Ok("hf.co/org/model-gguf:q4_k_m")
        );
        assert_eq!(
            ollama("localhost:5000/ns/m:t").as_deref(),
            Ok("localhost:5000/ns/m:t")
        );
    }

    #[test]
    fn names_outside_ollamas_grammar_are_refused() {
        for raw in [
            "",
            ":latest",
            "tinyllama:",
            "/tinyllama",
            "a//b",
            "a/b/c/d",
            "-tiny",
            "tiny llama",
            "tiny\nllama",
            "tiny@sha256:abc",
            "ns.x/model",
            "model:ta/g",
            "a/../b",
            "tinyllama:lat:est",
            "mödel",
            "x://",
        ] {
            assert!(ollama(raw).is_err(), "{raw:?} should be refused");
        }
        assert_eq!(ollama(&"a".repeat(257)), Err(NameError::TooLong));
        assert!(ollama(&"a".repeat(81)).is_err(), "a part over 80 bytes");
        assert!(ollama(&"a".repeat(80)).is_ok(), "a part of 80 bytes");
    }

    /// Patterns are checked before the engine's own grammar: the vLLM
    /// branch accepts any glob, so these checks are all that stands
    /// between a rule and a pattern no model name can be.
    #[test]
    fn patterns_that_cannot_be_a_name_are_refused_for_every_engine() {
        for engine in [Engine::Vllm, Engine::Ollama] {
            for bad in [
                String::new(),
                "x".repeat(MAX_NAME_BYTES + 1),
                "a b".into(),
                "a\u{7}b".into(),
            ] {
                assert!(
                    ModelPattern::parse(engine, &bad).is_err(),
                    "{engine:?}: {bad:?} accepted"
                );
            }
        }
        let longest = "x".repeat(MAX_NAME_BYTES);
        assert!(pattern(Engine::Vllm, &longest).matches(&longest));
        assert!(matches!(pattern(Engine::Vllm, "*"), ModelPattern::Any));
    }

    /// MCP targets: a kind, then the name exactly as the server has it.
    #[test]
    fn mcp_targets_are_a_kind_and_an_exact_name() {
        let name = |raw: &str| canonical_name(Engine::Mcp, raw).map(|n| n.to_string());
        for good in [
            "tool:search_docs",
            "resource:file:///a b.txt",
            "prompt:Summarize",
            "tool:ß",
        ] {
            assert_eq!(name(good).as_deref(), Ok(good));
        }
        for bad in [
            "search_docs",
            "Tool:search",
            "tool:",
            "resource:",
            "prompt:",
            "tool:a\u{7}b",
            "tool: a",
            "tool:a ",
            "",
        ] {
            assert!(name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(name(&format!("tool:{}", "x".repeat(MAX_NAME_BYTES))).is_err());
        // Patterns: a kind that is never a glob, then a glob of the name.
        let tools = pattern(Engine::Mcp, "tool:search*");
        assert!(tools.matches("tool:search_docs"));
        assert!(!tools.matches("tool:Search_docs"));
        assert!(!pattern(Engine::Mcp, "tool:*").matches("resource:tool:x"));
        assert!(pattern(Engine::Mcp, "*").matches("prompt:x"));
        for bad in ["search*", "*:x", "tool:", "tools:x", "tool:a b"] {
            assert!(
                ModelPattern::parse(Engine::Mcp, bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn openai_names_are_exact() {
        let name = |raw: &str| canonical_name(Engine::Vllm, raw).map(|n| n.to_string());
        assert_eq!(
            name("meta-llama/Llama-3.1-8B").as_deref(),
            Ok("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(name("/models/tiny").as_deref(), Ok("/models/tiny"));
        assert!(name("").is_err());
        assert!(name(" tiny").is_err());
        assert!(name("tiny\u{0}").is_err());
        assert_eq!(name(&"x".repeat(257)), Err(NameError::TooLong));
        // The limit itself is allowed.
        let longest = "x".repeat(MAX_NAME_BYTES);
        assert_eq!(name(&longest).as_deref(), Ok(longest.as_str()));
    }

    fn pattern(engine: Engine, p: &str) -> ModelPattern {
        ModelPattern::parse(engine, p).unwrap()
    }

    #[test]
    fn ollama_patterns_match_part_by_part() {
        let matches = |p: &str, raw: &str| {
            pattern(Engine::Ollama, p)
                .matches(canonical_name(Engine::Ollama, raw).unwrap().as_str())
        };
        assert!(matches(
            "tinyllama",
            "registry.ollama.ai/library/TinyLlama:latest"
        ));
        assert!(matches("TinyLlama:Latest", "tinyllama"));
        assert!(!matches("tinyllama", "tinyllama:1b"));
        assert!(matches("tinyllama*", "tinyllama-chat"));
        assert!(!matches("tinyllama*", "tinyllama/big"), "a namespace");
        assert!(
            !matches("tinyllama*", "tinyllama.evil.com/library/big"),
            "a host"
        );
        assert!(!matches("tinyllama*", "tinyllama:70b"), "another tag");
        assert!(matches("tinyllama*:*", "tinyllama:70b"));
        assert!(matches("*:1b", "llama3.2:1b"));
        assert!(!matches("*:1b", "someone/evil:1b"));
        assert!(matches("*/*:1b", "someone/evil:1b"));
        assert!(matches("*", "hf.co/a/b:c"));
        assert!(matches("hf.co/*/*:*", "hf.co/a/b:c"));
        assert!(!matches("llama3.2:*", "llama3.2.evil:1b"));
        assert!(ModelPattern::parse(Engine::Ollama, "a b").is_err());
        assert!(ModelPattern::parse(Engine::Ollama, "a/b/c/d").is_err());
    }

    #[test]
    fn openai_patterns_are_globs_over_the_exact_name() {
        let p = pattern(Engine::Vllm, "meta-llama/*");
        assert!(p.matches("meta-llama/Llama-3.1-8B"));
        assert!(!p.matches("Meta-Llama/x"));
        assert!(pattern(Engine::Vllm, "*").matches("anything at all"));
    }
}
