//! Prints the CRDs as YAML, or writes them into a folder:
//! `crdgen` (stdout, separated by `---`) or `crdgen --out crds`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let out = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--out"), Some(dir)) => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--out DIR]");
            return ExitCode::from(64);
        }
    };
    for (file, crd) in attach_operator::crd::all() {
        let yaml = match attach_operator::crd::to_yaml(&crd) {
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
