//! Prints the CRDs as YAML, or writes them into a folder, or writes the
//! chart's CRD templates, or the API reference: `crdgen` (stdout, separated
//! by `---`), `crdgen --out crds`, `crdgen --chart
//! charts/attach/templates/crds`, `crdgen --reference docs/crd-reference.md`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (chart, out) = match (args.next().as_deref(), args.next()) {
        (None, _) => (false, None),
        (Some("--out"), Some(dir)) => (false, Some(PathBuf::from(dir))),
        (Some("--chart"), Some(dir)) => (true, Some(PathBuf::from(dir))),
        (Some("--reference"), Some(file)) => {
            let crds: Vec<_> = attach_operator::crd::all()
                .into_iter()
                .map(|(_, crd)| crd)
                .collect();
            let text = attach_operator::crd::reference::markdown(&crds);
            return match std::fs::write(&file, text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crdgen: {file}: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {
            eprintln!("usage: crdgen [--out DIR | --chart DIR | --reference FILE]");
            return ExitCode::from(64);
        }
    };
    for (file, crd) in attach_operator::crd::all() {
        let yaml = if chart {
            attach_operator::crd::to_chart_template(&crd)
        } else {
            attach_operator::crd::to_yaml(&crd)
        };
        let yaml = match yaml {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("crdgen: {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match &out {
            None => print!("---\n{yaml}"),
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(file), yaml) {
                    eprintln!("crdgen: {}: {e}", dir.join(file).display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
