//! Test harness: a real `deadsfu` process on free loopback ports, stopped when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Sfu {
    child: Child,
    pub base: String,
    /// Everything the process wrote to stderr (its logs) so far is readable here at the end.
    logs: mpsc::Receiver<String>,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sfu {
    pub fn start(extra: &[&str]) -> Sfu {
        let port = free_tcp_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_deadsfu"))
            .args([
                "serve",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--udp-port",
                "0",
                "--workers",
                "2",
                "--ice-candidate-host",
                "127.0.0.1",
            ])
            .args(extra)
            .env("RUST_LOG", "info,str0m=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start deadsfu");
        // Wait for the start-up banner: the HTTP listener is bound before it is printed.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("deadsfu printed its banner");
        assert!(
            banner.contains("listening on"),
            "unexpected banner {banner}"
        );
        let stderr = child.stderr.take().expect("stderr");
        let (ltx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = ltx.send(line);
            }
        });
        Sfu {
            child,
            base: format!("http://127.0.0.1:{port}"),
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Log lines written so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
