//! Test harness: a real `deadsfu` process on free loopback ports, stopped when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Sfu {
    child: Child,
    pub base: String,
    /// FTL control port (FTL listens on a free port unless the test says otherwise).
    pub ftl_port: u16,
    /// Everything the process wrote to stderr (its logs) so far is readable here at the end.
    logs: mpsc::Receiver<String>,
}

impl Sfu {
    pub fn start(extra: &[&str]) -> Sfu {
        Sfu::start_with_env(extra, &[])
    }

    /// Like [`Sfu::start`], with extra environment variables for the process.
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> Sfu {
        let port = deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST);
        let ftl_port = deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST);
        let ftl_listen = format!("127.0.0.1:{ftl_port}");
        let ftl_args: Vec<&str> = if extra.contains(&"--ftl-listen") {
            vec![]
        } else {
            vec!["--ftl-listen", &ftl_listen, "--ftl-udp-port", "0"]
        };
        // Two media workers unless the test chooses.
        let worker_args: &[&str] = if extra.contains(&"--workers") {
            &[]
        } else {
            &["--workers", "2"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_deadsfu"))
            .args([
                "serve",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--udp-port",
                "0",
                "--ice-candidate-host",
                "127.0.0.1",
            ])
            .args(worker_args)
            .args(&ftl_args)
            .args(extra)
            .env("RUST_LOG", "info,str0m=warn")
            .envs(envs.iter().copied())
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
            ftl_port,
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

impl Sfu {
    /// Waits up to `timeout` for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test media made with Debian's ffmpeg (made once per test binary): 4 s of 320x240 30 fps H264
/// constrained baseline (no B-frames, a keyframe every 30 frames) as Annex-B, and Opus in Ogg.
pub fn ftl_media() -> (std::path::PathBuf, std::path::PathBuf) {
    use std::sync::OnceLock;
    static MEDIA: OnceLock<(std::path::PathBuf, std::path::PathBuf)> = OnceLock::new();
    MEDIA
        .get_or_init(|| {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ftl-media");
            std::fs::create_dir_all(&dir).unwrap();
            let video = dir.join("testsrc-320x240-g30.h264");
            let audio = dir.join("sine-48k.ogg");
            let make = |out: &std::path::Path, args: &[&str]| {
                // Write elsewhere and rename, so parallel test binaries never read half a file.
                let tmp = out.with_extension(format!("tmp{}", std::process::id()));
                let status = Command::new("ffmpeg")
                    .args(["-y", "-loglevel", "error", "-f", "lavfi", "-i"])
                    .args(args)
                    .arg(&tmp)
                    .status()
                    .expect("ffmpeg (apt-get install ffmpeg)");
                assert!(status.success(), "ffmpeg failed");
                std::fs::rename(&tmp, out).unwrap();
            };
            if !video.exists() {
                make(
                    &video,
                    &[
                        "testsrc=size=320x240:rate=30",
                        "-t",
                        "4",
                        "-c:v",
                        "libx264",
                        "-profile:v",
                        "baseline",
                        "-bf",
                        "0",
                        "-g",
                        "30",
                        "-pix_fmt",
                        "yuv420p",
                        "-f",
                        "h264",
                    ],
                );
            }
            if !audio.exists() {
                make(
                    &audio,
                    &[
                        "sine=frequency=440:sample_rate=48000",
                        "-t",
                        "4",
                        "-c:a",
                        "libopus",
                        "-b:a",
                        "64k",
                        "-f",
                        "ogg",
                    ],
                );
            }
            (video, audio)
        })
        .clone()
}

/// A `deadsfu ftl-push` process, stopped (SIGINT, then kill) when dropped.
pub struct FtlPush {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl FtlPush {
    pub fn start(ftl_port: u16, key: &str, extra: &[&str]) -> FtlPush {
        let (video, audio) = ftl_media();
        let mut child = Command::new(env!("CARGO_BIN_EXE_deadsfu"))
            .args([
                "ftl-push",
                "--server",
                &format!("127.0.0.1:{ftl_port}"),
                "--key",
                key,
            ])
            .arg("--video")
            .arg(&video)
            .arg("--audio")
            .arg(&audio)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start deadsfu ftl-push");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        FtlPush { child, stderr: rx }
    }

    /// Waits for the push to exit; returns (success, everything it logged).
    pub fn wait(mut self, timeout: Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log: Vec<String> = self.stderr.try_iter().collect();
                return (status.success(), log.join("\n"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ftl-push did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for FtlPush {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        for _ in 0..40 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
