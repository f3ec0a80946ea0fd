//! `--acme-dns-hook CMD`: DNS-01 records are set and cleared by an operator's command, called
//! as `CMD set|clear NAME VALUE` through `sh -c` (so CMD may carry its own arguments).

use std::process::Stdio;
use std::time::Duration;

/// How long the hook may take (DNS APIs can be slow, but not forever).
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// Output of a failing hook quoted in the error, at most.
const MAX_QUOTED: usize = 300;

#[derive(Debug, Clone)]
pub struct DnsHook {
    command: String,
}

impl DnsHook {
    pub fn new(command: String) -> Self {
        Self { command }
    }

    /// Runs `CMD op name value`; an error says how it failed.
    pub async fn run(&self, op: &str, name: &str, value: &str) -> Result<(), String> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} \"$@\"", self.command))
            .arg("deadsfu-dns-hook")
            .args([op, name, value])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the hook: {e}"))?;
        let out = tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("the hook took longer than {HOOK_TIMEOUT:?}"))?
            .map_err(|e| format!("the hook failed to run: {e}"))?;
        if out.status.success() {
            tracing::debug!(op, name, "DNS hook done");
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        text.truncate(MAX_QUOTED);
        Err(format!("`{op} {name}` exited with {}: {text}", out.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_arguments_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = DnsHook::new(format!(
            "printf '%s,' extra >> {} && printf '%s,' ",
            out.display()
        ));
        // The hook's own arguments come first, then op, name, value.
        let hook2 = DnsHook::new(format!("sh -c 'echo \"$@\" > {}' x", out.display()));
        hook2
            .run("set", "_acme-challenge.a.test", "v1")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "set _acme-challenge.a.test v1"
        );
        drop(hook);
        let failing = DnsHook::new("echo nope >&2; exit 3; :".to_string());
        let err = failing.run("clear", "n", "v").await.unwrap_err();
        assert!(err.contains("nope") && err.contains("clear n"), "{err}");
    }
}
