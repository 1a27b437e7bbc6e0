//! JSON lines, one `GetEventsResponse` per line, to stdout or to a file that
//! rotates by size and keeps a number of backups (`FILE.1` is the newest), as
//! Tetragon's `--export-file-max-size-mb` / `--export-file-max-backups` do,
//! and by age with `--export-file-rotation-interval`.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Envelope, Sink};

/// Where whole JSON lines go (the export flags in `shape` write through
/// this).
pub trait Lines {
    /// One line, with its newline.
    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

/// JSON lines to any writer.
pub struct JsonSink<W: Write>(pub W);

impl<W: Write> Lines for JsonSink<W> {
    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn write(&mut self, event: &Envelope) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.0, event)?;
        self.0.write_all(b"\n")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// JSON lines to a file with size-based rotation.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    written: u64,
    out: BufWriter<File>,
    line: Vec<u8>,
    /// Rotate a file this old, when it holds anything.
    interval: Option<Duration>,
    opened: Instant,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, backups: u32) -> std::io::Result<Self> {
        Self::with_interval(path, max_bytes, backups, None)
    }

    /// As [`RotatingFile::new`], also rotating every `interval`.
    pub fn with_interval(
        path: PathBuf,
        max_bytes: u64,
        backups: u32,
        interval: Option<Duration>,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            max_bytes,
            backups,
            written,
            out: BufWriter::new(file),
            line: Vec::with_capacity(1024),
            interval,
            opened: Instant::now(),
        })
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.backups).rev() {
                let from = self.backup(n);
                if from.exists() {
                    std::fs::rename(&from, self.backup(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.backup(1))?;
        }
        self.out = BufWriter::new(open(&self.path)?);
        self.written = 0;
        self.opened = Instant::now();
        Ok(())
    }

    fn too_old(&self) -> bool {
        self.interval.is_some_and(|i| self.opened.elapsed() >= i)
    }
}

impl Lines for RotatingFile {
    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let full = self.written + bytes.len() as u64 > self.max_bytes;
        if self.written > 0 && (full || self.too_old()) {
            self.rotate()?;
        }
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Sink for RotatingFile {
    fn write(&mut self, event: &Envelope) -> std::io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        serde_json::to_writer(&mut line, event)?;
        line.push(b'\n');
        let r = self.line(&line);
        self.line = line;
        r
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Lines::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::event::{Event, Process, ProcessExec};

    fn event(pid: u32) -> Envelope {
        Envelope {
            event: Event::ProcessExec(ProcessExec {
                process: Process {
                    pid,
                    binary: "/bin/true".into(),
                    ..Default::default()
                },
                parent: None,
                ancestors: Vec::new(),
            }),
            node_name: "n".into(),
            time: "t".into(),
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_backups() {
        let dir = std::env::temp_dir().join(format!("sensor-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.log");
        let line_len = serde_json::to_vec(&event(1000)).unwrap().len() as u64 + 1;
        let mut f = RotatingFile::new(path.clone(), line_len * 3, 2).unwrap();
        for pid in 1000..1010 {
            f.write(&event(pid)).unwrap();
        }
        Sink::flush(&mut f).unwrap();
        let read = |p: &Path| -> Vec<u32> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Envelope>(l)
                        .unwrap()
                        .event
                        .process()
                        .map(|p| p.pid)
                        .unwrap_or_default()
                })
                .collect()
        };
        assert_eq!(read(&path), vec![1009]);
        assert_eq!(read(&dir.join("events.log.1")), vec![1006, 1007, 1008]);
        assert_eq!(read(&dir.join("events.log.2")), vec![1003, 1004, 1005]);
        assert!(
            !dir.join("events.log.3").exists(),
            "only two backups are kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_by_age() {
        let dir = std::env::temp_dir().join(format!("sensor-age-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.log");
        let mut f =
            RotatingFile::with_interval(path.clone(), u64::MAX, 3, Some(Duration::from_millis(50)))
                .unwrap();
        f.write(&event(1)).unwrap();
        f.write(&event(2)).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        f.write(&event(3)).unwrap();
        Sink::flush(&mut f).unwrap();
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&dir.join("events.log.1")), 2, "the old file rotated");
        assert_eq!(lines(&path), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
