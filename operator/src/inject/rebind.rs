//! Moving the model onto loopback, per engine: Ollama by `OLLAMA_HOST`,
//! vLLM by `--host 127.0.0.1 --port N` (in the args, or in the command line
//! where the flags already are), a generic OpenAI-compatible server or an
//! MCP server as its LLMBackend says.

use k8s_openapi::api::core::v1::{Container, EnvVar};

use crate::crd::LLMBackendSpec;
use crate::crd::llm_backend::Engine;

/// Rebinds `model` to `127.0.0.1:<port>`.
pub fn rebind(model: &mut Container, spec: &LLMBackendSpec, port: u16) {
    match spec.engine {
        Engine::Ollama => set_env(model, "OLLAMA_HOST", &format!("127.0.0.1:{port}")),
        Engine::Vllm => rebind_vllm(model, port),
        Engine::Openai => {
            let rebind = spec.openai.clone().unwrap_or_default();
            templated(model, &rebind.env, &rebind.args, port);
        }
        Engine::Mcp => {
            let server = spec.mcp.clone().unwrap_or_default();
            templated(model, &server.env, &server.args, port);
        }
    }
}

/// Sets `env` and appends `args`, `{port}` replaced by `port`.
fn templated(
    model: &mut Container,
    env: &std::collections::BTreeMap<String, String>,
    args: &[String],
    port: u16,
) {
    for (name, value) in env {
        set_env(model, name, &value.replace("{port}", &port.to_string()));
    }
    if !args.is_empty() {
        let to = model.args.get_or_insert_with(Vec::new);
        to.extend(args.iter().map(|a| a.replace("{port}", &port.to_string())));
    }
}

fn set_env(container: &mut Container, name: &str, value: &str) {
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    });
}

/// vLLM's flags live in `args`, in `command`, or in a shell line
/// (`sh -c "vllm serve m --port 8000 && ..."`). Flags present are rewritten
/// where they are; missing ones go to the end of the args, or of the vLLM
/// command in a shell line.
fn rebind_vllm(model: &mut Container, port: u16) {
    let port = port.to_string();
    if let Some(line) = shell_line(model) {
        let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let end = words
            .iter()
            .position(|w| matches!(w.as_str(), "&&" | "||" | ";" | "|" | "&"))
            .unwrap_or(words.len());
        set_flags(&mut words, end, &port);
        *line = words.join(" ");
        return;
    }
    let in_command = model.command.as_ref().is_some_and(|c| has_flags(c));
    if in_command && let Some(command) = model.command.as_mut() {
        let end = command.len();
        set_flags(command, end, &port);
        return;
    }
    let args = model.args.get_or_insert_with(Vec::new);
    let end = args.len();
    set_flags(args, end, &port);
}

fn has_flags(words: &[String]) -> bool {
    words.iter().any(|w| {
        w == "--port" || w == "--host" || w.starts_with("--port=") || w.starts_with("--host=")
    })
}

/// Sets `--host 127.0.0.1` and `--port <port>` in `words`: in place for
/// each spelling present (`--flag v`, `--flag=v`), else inserted at `end`.
fn set_flags(words: &mut Vec<String>, mut end: usize, port: &str) {
    let mut missing = Vec::new();
    for (flag, value) in [("--host", "127.0.0.1"), ("--port", port)] {
        let mut found = false;
        let mut i = 0;
        while i < words.len() {
            if words[i] == flag {
                found = true;
                if i + 1 < words.len() {
                    words[i + 1] = value.to_owned();
                } else {
                    // A trailing flag without its value.
                    if end >= words.len() {
                        end += 1;
                    }
                    words.push(value.to_owned());
                }
                i += 2;
                continue;
            }
            if words[i].starts_with(&format!("{flag}=")) {
                found = true;
                words[i] = format!("{flag}={value}");
            }
            i += 1;
        }
        if !found {
            missing.push(flag.to_owned());
            missing.push(value.to_owned());
        }
    }
    let end = end.min(words.len());
    words.splice(end..end, missing);
}

/// The script of `sh -c '<line>'` (in command or args) when it runs vLLM.
fn shell_line(model: &mut Container) -> Option<&mut String> {
    let command = model.command.clone().unwrap_or_default();
    let is_shell = command
        .first()
        .is_some_and(|c| c.ends_with("sh") || c.ends_with("bash"));
    if !is_shell || command.get(1).map(String::as_str) != Some("-c") {
        return None;
    }
    let runs_vllm = |s: &String| s.contains("vllm");
    if command.get(2).is_some_and(runs_vllm) {
        return model.command.as_mut().and_then(|c| c.get_mut(2));
    }
    if model
        .args
        .as_ref()
        .and_then(|a| a.first())
        .is_some_and(runs_vllm)
    {
        return model.args.as_mut().and_then(|a| a.get_mut(0));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_are_rewritten_where_they_are_or_added_at_the_end() {
        let mut w = words("--model m --host 0.0.0.0 --port=8000 --dtype auto");
        let end = w.len();
        set_flags(&mut w, end, "15434");
        assert_eq!(
            w,
            words("--model m --host 127.0.0.1 --port=15434 --dtype auto")
        );
        let mut w = words("vllm serve m && echo done");
        set_flags(&mut w, 3, "15434");
        assert_eq!(
            w,
            words("vllm serve m --host 127.0.0.1 --port 15434 && echo done")
        );
        let mut w = words("--port");
        set_flags(&mut w, 1, "9");
        assert_eq!(w, words("--port 9 --host 127.0.0.1"));
    }

    fn vllm() -> LLMBackendSpec {
        serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "engine": "vllm",
            "port": 8000,
            "identityProviderRefs": [{"name": "corp"}],
        }))
        .unwrap()
    }

    fn container(command: &str, args: &str) -> Container {
        Container {
            name: "vllm".into(),
            command: Some(words(command)),
            args: Some(words(args)),
            ..Container::default()
        }
    }

    /// vLLM's flags are rewritten where they are, whichever spelling:
    /// left in the command while the args got a second `--port`, vLLM
    /// would take the last one and keep the gateway's port.
    #[test]
    fn vllm_flags_are_rewritten_in_the_command_that_has_them() {
        let server = "python3 -m vllm.entrypoints.openai.api_server --model m";
        for (flags, rewritten) in [
            ("--port 8000", "--port 18000 --host 127.0.0.1"),
            ("--host 0.0.0.0", "--host 127.0.0.1 --port 18000"),
            ("--port=8000", "--port=18000 --host 127.0.0.1"),
            ("--host=0.0.0.0", "--host=127.0.0.1 --port 18000"),
        ] {
            let mut model = container(&format!("{server} {flags}"), "--dtype auto");
            rebind(&mut model, &vllm(), 18000);
            assert_eq!(
                model.command,
                Some(words(&format!("{server} {rewritten}"))),
                "{flags}"
            );
            assert_eq!(model.args, Some(words("--dtype auto")), "{flags}");
        }
        // `-c` after something that is not a shell is no shell line: the
        // Python code is left alone, the flags go to the args.
        let code = "import runpy; runpy.run_module('vllm.entrypoints.openai.api_server', run_name='__main__')";
        let mut model = Container {
            name: "vllm".into(),
            command: Some(vec!["python3".into(), "-c".into(), code.into()]),
            args: Some(words("--model m --port 8000")),
            ..Container::default()
        };
        rebind(&mut model, &vllm(), 18000);
        assert_eq!(
            model.command,
            Some(vec!["python3".into(), "-c".into(), code.into()])
        );
        assert_eq!(
            model.args,
            Some(words("--model m --port 18000 --host 127.0.0.1"))
        );
        // Flags in the args and none in the command: rewritten in the
        // args; the command is left alone.
        let mut model = container("vllm serve", "m --host 0.0.0.0 --port 8000");
        rebind(&mut model, &vllm(), 18000);
        assert_eq!(model.command, Some(words("vllm serve")));
        assert_eq!(model.args, Some(words("m --host 127.0.0.1 --port 18000")));
    }
}
