//! What a pull or a push shows while bytes move: on a terminal, a bar for
//! the whole transfer and one per blob in flight (indicatif), with rate and
//! ETA; elsewhere (a pod, whose stderr is a log), a log line every
//! `--progress-interval`. Both carry the numbers, as `bytes_done` and
//! `bytes_total` fields in the log lines (numbers in JSON logs).
//!
//! Log lines and bars share stderr: [`LogWriter`] lifts the bars while a
//! line is written, so the two never interleave.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether bars are drawn: set once, by the command line, when stderr is a
/// terminal, the log format is text and `-q` was not given.
static BARS: AtomicBool = AtomicBool::new(false);

/// Every bar of this process, drawn on stderr.
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Blobs smaller than this get no bar of their own (a model of many small
/// files would only flicker); the total bar counts them.
const BAR_MIN_BYTES: u64 = 1 << 20;

/// How often bars are redrawn from the byte counters.
const BAR_TICK: Duration = Duration::from_millis(100);

/// Whether a person reads stderr: a terminal, text logs.
static WATCHED: AtomicBool = AtomicBool::new(false);

/// Set once, before any transfer: whether a person reads stderr (a
/// terminal with text logs), and whether bars are drawn there (not with
/// `-q`, nor with a log level that hides progress).
pub fn set_display(watched: bool, bars: bool) {
    WATCHED.store(watched, Ordering::Relaxed);
    BARS.store(watched && bars, Ordering::Relaxed);
}

/// Whether a person reads stderr: the final error line says it all, with
/// no log line repeating it.
pub fn watched() -> bool {
    WATCHED.load(Ordering::Relaxed)
}

/// Whether bars are drawn: stderr is a terminal a person watches.
pub fn bars() -> bool {
    BARS.load(Ordering::Relaxed)
}

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Takes the bars off the screen for good: the process is about to exit
/// with a last line of its own (Ctrl-C), which must not land inside them.
pub fn clear() {
    if let Some(m) = MULTI.get() {
        let _ = m.clear();
    }
}

/// stderr for the log: each line is written with the bars lifted.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match MULTI.get() {
            Some(m) if bars() => m.suspend(|| io::stderr().write_all(buf))?,
            _ => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// One transfer (a pull of one URI, a push): its blobs' byte counters, and
/// what reports them. Reporting stops when it is dropped.
pub struct Board {
    what: String,
    total: u64,
    started: Instant,
    counters: Mutex<Vec<Arc<Progress>>>,
    /// Bars drawn now: the whole transfer's, then one per blob in flight.
    bars: Mutex<Vec<(Arc<Progress>, ProgressBar)>>,
    total_bar: Option<ProgressBar>,
    reporter: Option<tokio::task::JoinHandle<()>>,
}

impl Board {
    /// Starts reporting `total` bytes of `what` (`verb`: "pulling",
    /// "pushing"): bars on a terminal, else a log line `every` interval.
    /// Needs a tokio runtime.
    pub fn start(what: &str, verb: &str, total: u64, every: Duration) -> Arc<Board> {
        let total_bar = bars().then(|| {
            let bar = multi().add(ProgressBar::new(total));
            bar.set_style(style(&format!("{verb} {{prefix}}")));
            bar.set_prefix(what.to_string());
            bar.tick();
            bar
        });
        Arc::new_cyclic(|weak: &std::sync::Weak<Board>| {
            let weak = weak.clone();
            let reporter = tokio::spawn(async move {
                let mut tick = tokio::time::interval(if bars() { BAR_TICK } else { every });
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(board) = weak.upgrade() else { return };
                    board.report();
                }
            });
            Board {
                what: what.to_string(),
                total,
                started: Instant::now(),
                counters: Mutex::new(Vec::new()),
                bars: Mutex::new(Vec::new()),
                total_bar,
                reporter: Some(reporter),
            }
        })
    }

    /// A counter for one blob of `size` bytes, named `label` on its bar.
    pub fn blob(&self, size: u64, label: &str) -> Blob {
        let counter = Progress::new(size);
        self.counters.lock().unwrap().push(counter.clone());
        let bar = (bars() && size >= BAR_MIN_BYTES).then(|| {
            let bar = multi().add(ProgressBar::new(size));
            bar.set_style(style("  {prefix}"));
            bar.set_prefix(shorten(label, 40));
            bar.tick();
            self.bars
                .lock()
                .unwrap()
                .push((counter.clone(), bar.clone()));
            bar
        });
        Blob { counter, bar }
    }

    /// Bytes moved so far, all blobs together.
    pub fn done(&self) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.fetched.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes of whole files cloned from the node cache, over every blob.
    pub fn cloned(&self) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.cloned.load(Ordering::Relaxed))
            .sum()
    }

    /// e.g. `12.0 MiB of 400.0 MiB (3%), 95.1 MiB/s, ETA 4s`
    pub fn line(&self) -> String {
        let p = Progress {
            fetched: AtomicU64::new(self.done()),
            cloned: AtomicU64::new(self.cloned()),
            total: self.total,
            started: self.started,
        };
        p.line()
    }

    fn report(&self) {
        let done = self.done();
        match &self.total_bar {
            Some(total) => {
                total.set_position(done);
                let mut bars = self.bars.lock().unwrap();
                bars.retain(|(_, bar)| !bar.is_finished());
                for (counter, bar) in bars.iter() {
                    bar.set_position(counter.fetched.load(Ordering::Relaxed));
                }
            }
            None => tracing::info!(
                uri = %self.what,
                bytes_done = done,
                bytes_total = self.total,
                "progress: {}",
                self.line()
            ),
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if let Some(r) = &self.reporter {
            r.abort();
        }
        if let Some(bar) = &self.total_bar {
            bar.finish_and_clear();
            multi().remove(bar);
        }
    }
}

/// One blob's counter; its bar goes when the blob is done.
pub struct Blob {
    counter: Arc<Progress>,
    bar: Option<ProgressBar>,
}

impl Blob {
    pub fn counter(&self) -> &Arc<Progress> {
        &self.counter
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            multi().remove(bar);
        }
    }
}

fn style(prefix: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{prefix} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
    ))
    .expect("the template is valid")
    .progress_chars("=> ")
}

/// `label` cut to `max` characters, keeping its end (a file's name).
fn shorten(label: &str, max: usize) -> String {
    let n = label.chars().count();
    if n <= max {
        return label.to_string();
    }
    let tail: String = label.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}

/// Byte counters for progress lines and metrics.
#[derive(Debug)]
pub struct Progress {
    pub fetched: AtomicU64,
    /// Bytes of whole files cloned from the node cache (no new disk).
    pub cloned: AtomicU64,
    pub total: u64,
    pub started: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Arc<Progress> {
        Arc::new(Progress {
            fetched: AtomicU64::new(0),
            cloned: AtomicU64::new(0),
            total,
            started: Instant::now(),
        })
    }

    /// e.g. `12.0 MiB of 400.0 MiB (3%), 95.1 MiB/s, ETA 4s`
    pub fn line(&self) -> String {
        let done = self.fetched.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        let eta = if rate > 0.0 && self.total > done {
            format!("{:.0}s", (self.total - done) as f64 / rate)
        } else {
            "-".into()
        };
        format!(
            "{} of {} ({pct}%), {}/s, ETA {eta}",
            mib(done),
            mib(self.total),
            mib(rate as u64)
        )
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_their_end() {
        assert_eq!(shorten("w.bin", 40), "w.bin");
        let long = format!("{}/model.safetensors", "d".repeat(50));
        let s = shorten(&long, 20);
        assert_eq!(s.chars().count(), 20);
        assert!(
            s.starts_with('…') && s.ends_with("model.safetensors"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn the_board_sums_its_blobs() {
        let board = Board::start("x", "pulling", 30, Duration::from_secs(3600));
        let a = board.blob(10, "a");
        let b = board.blob(20, "b");
        a.counter().fetched.fetch_add(10, Ordering::Relaxed);
        b.counter().fetched.fetch_add(5, Ordering::Relaxed);
        assert_eq!(board.done(), 15);
        assert!(
            board.line().starts_with("0.0 MiB of 0.0 MiB (50%)"),
            "{}",
            board.line()
        );
    }
}
