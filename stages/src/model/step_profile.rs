//! Where a training step's time goes, region by region, measured inside a real step (`flora bench
//! --profile`).
//!
//! Timing pieces one at a time (`flora bench --ops`) runs each outside the step, with a harness
//! whose own cost grows with the piece. Here the step itself is cut into laps: every lap ends at a
//! mark, and the time since the previous mark goes to the innermost open region (or to the
//! current phase: forward, backward, LAMB). Every moment of the step belongs to exactly one
//! label, so the labels add up to the step. On the CPU a mark is an `Instant` (candle's CPU ops
//! are synchronous); on a CUDA GPU it is an event recorded on candle's stream, so nothing waits
//! while the step runs and the events are read once at the end.
//!
//! Regions are free when no profile is being recorded: [`region`] and [`phase`] check a
//! thread-local and run the work.

use std::cell::RefCell;
use std::time::Instant;

use candle_core::{Device, Result};
use serde::Serialize;

/// The time one label got over a profiled run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegionTime {
    /// What ran: a phase (`backward: ...`) or a region (`forward: dense 768 -> 3072, GELU`).
    pub label: String,
    /// Seconds on the device's timeline, summed over the run.
    pub seconds: f64,
    /// Seconds the host spent in the label's laps, issuing their work, summed over the run. On
    /// the CPU the same as `seconds`; on a GPU, a label whose host time comes close to its
    /// device time was limited by launching its kernels rather than by running them.
    pub host_seconds: f64,
    /// How many laps ended with this label.
    pub laps: usize,
}

/// A point on the device's timeline.
enum Mark {
    Cpu(Instant),
    #[cfg(feature = "cuda")]
    Gpu(candle_core::cuda_backend::cudarc::driver::CudaEvent),
}

impl Mark {
    fn now(device: &Device) -> Result<Mark> {
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => {
                use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
                let event = cuda
                    .cuda_stream()
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(|e| candle_core::Error::Msg(format!("profile mark: {e}")))?;
                Ok(Mark::Gpu(event))
            }
            _ => Ok(Mark::Cpu(Instant::now())),
        }
    }

    /// Seconds from `self` to `later`.
    fn seconds_until(&self, later: &Mark) -> Result<f64> {
        match (self, later) {
            (Mark::Cpu(a), Mark::Cpu(b)) => Ok(b.duration_since(*a).as_secs_f64()),
            #[cfg(feature = "cuda")]
            (Mark::Gpu(a), Mark::Gpu(b)) => a
                .elapsed_ms(b)
                .map(|ms| ms as f64 / 1e3)
                .map_err(|e| candle_core::Error::Msg(format!("profile mark: {e}"))),
            #[cfg(feature = "cuda")]
            _ => Err(candle_core::Error::Msg(
                "profile marks from different devices".into(),
            )),
        }
    }
}

/// The profile being recorded on this thread.
struct Recorder {
    device: Device,
    /// The open labels, the phase at the bottom (none before the first phase).
    open: Vec<String>,
    /// Each mark with the label of the lap it ends, and the host's clock when it was made.
    marks: Vec<(String, Mark, Instant)>,
    start: (Mark, Instant),
}

impl Recorder {
    /// Ends the current lap: the time since the previous mark goes to the innermost open label.
    fn lap(&mut self) -> Result<()> {
        let label = self.open.last().map_or(OUTSIDE, String::as_str).to_string();
        let mark = Mark::now(&self.device)?;
        self.marks.push((label, mark, Instant::now()));
        Ok(())
    }
}

/// The forward region of self-attention (all heads, dropout included).
pub const ATTENTION: &str = "forward: self-attention";

/// The forward region of a residual add and the LayerNorm after it.
pub const RESIDUAL_LAYER_NORM: &str = "forward: residual add + LayerNorm";

/// The forward region of a dense layer's bias and dropout, the residual add and the LayerNorm
/// after it, as one pass (`residual_norm.rs`).
pub const DENSE_RESIDUAL_LAYER_NORM: &str = "forward: bias, dropout, residual add + LayerNorm";

/// The forward region of the MLM head's decoder product (tied to the word embeddings).
pub const MLM_DECODER: &str = "forward: MLM decoder product";

/// The forward region of the MLM loss over the decoder's logits.
pub const MLM_LOSS: &str = "forward: MLM loss";

/// The label of time before the first phase, outside any region.
const OUTSIDE: &str = "outside any phase";

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

fn with_recorder(f: impl FnOnce(&mut Recorder) -> Result<()>) -> Result<()> {
    RECORDER.with(|r| match r.borrow_mut().as_mut() {
        Some(rec) => f(rec),
        None => Ok(()),
    })
}

fn recording() -> bool {
    RECORDER.with(|r| r.borrow().is_some())
}

/// Runs `work` on `device` with a profile recorded: its result and the time of every label, in
/// the order each first appeared. The labels' seconds add up to the whole of `work`.
pub fn record<T>(
    device: &Device,
    work: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<RegionTime>)> {
    if recording() {
        candle_core::bail!("a profile is already being recorded on this thread");
    }
    device.synchronize()?;
    let start = (Mark::now(device)?, Instant::now());
    RECORDER.with(|r| {
        *r.borrow_mut() = Some(Recorder {
            device: device.clone(),
            open: Vec::new(),
            marks: Vec::new(),
            start,
        })
    });
    let out = work().and_then(|v| with_recorder(Recorder::lap).map(|_| v));
    let rec = RECORDER.with(|r| r.borrow_mut().take());
    let out = out?;
    let Some(rec) = rec else {
        candle_core::bail!("the profile's recorder went missing");
    };
    device.synchronize()?;
    let mut times: Vec<RegionTime> = Vec::new();
    let (mut previous, mut previous_host) = (&rec.start.0, rec.start.1);
    for (label, mark, host) in &rec.marks {
        let seconds = previous.seconds_until(mark)?;
        let host_seconds = host.duration_since(previous_host).as_secs_f64();
        (previous, previous_host) = (mark, *host);
        add_to(
            &mut times,
            RegionTime {
                label: label.clone(),
                seconds,
                host_seconds,
                laps: 1,
            },
        );
    }
    Ok((out, times))
}

/// Adds `time` to its label's entry of `times`, or appends it (the order of first appearance).
pub fn add_to(times: &mut Vec<RegionTime>, time: RegionTime) {
    match times.iter_mut().find(|t| t.label == time.label) {
        Some(t) => {
            t.seconds += time.seconds;
            t.host_seconds += time.host_seconds;
            t.laps += time.laps;
        }
        None => times.push(time),
    }
}

/// Starts a phase of the step (`forward`, `backward`, ...): the time since the last mark goes to
/// the phase before, and time outside any region goes to this one from now on.
pub fn phase(label: &str) -> Result<()> {
    with_recorder(|rec| {
        // The first phase, called first, takes the moments since the start.
        if !(rec.open.is_empty() && rec.marks.is_empty()) {
            rec.lap()?;
        }
        match rec.open.first_mut() {
            Some(bottom) => *bottom = label.to_string(),
            None => rec.open.push(label.to_string()),
        }
        Ok(())
    })
}

/// Runs `work` as a region named by `label` (built only while a profile is recorded): its time,
/// less that of the regions inside it, goes to that label.
pub fn region<T>(label: impl FnOnce() -> String, work: impl FnOnce() -> Result<T>) -> Result<T> {
    if !recording() {
        return work();
    }
    let label = label();
    with_recorder(|rec| {
        rec.lap()?;
        rec.open.push(label);
        Ok(())
    })?;
    let out = work();
    with_recorder(|rec| {
        let lapped = rec.lap();
        rec.open.pop();
        lapped
    })?;
    out
}

/// The label for the backward pass of the innermost open region, when it is a forward one
/// (`forward: X` gives `backward: X`): an op calls this in its forward pass and times its backward
/// pass with [`backward_region`], so that each region's backward time is reported beside it.
pub fn mirror() -> Option<String> {
    RECORDER.with(|r| {
        let r = r.borrow();
        // Above the phase at the bottom.
        let label = r.as_ref()?.open.get(1..)?.last()?;
        label
            .strip_prefix("forward: ")
            .map(|rest| format!("backward: {rest}"))
    })
}

/// Runs `work` as a region named `label` (from [`mirror`]); without one, as part of the region
/// or phase already open.
pub fn backward_region<T>(label: &Option<String>, work: impl FnOnce() -> Result<T>) -> Result<T> {
    match label {
        Some(label) => region(|| label.clone(), work),
        None => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy for at least `ms` milliseconds.
    fn spin(ms: u64) -> Result<()> {
        let t = Instant::now();
        while t.elapsed().as_millis() < ms as u128 {
            std::hint::spin_loop();
        }
        Ok(())
    }

    #[test]
    fn every_moment_goes_to_the_innermost_open_label() {
        let dev = Device::Cpu;
        let wall = Instant::now();
        let (value, times) = record(&dev, || {
            phase("forward")?;
            spin(2)?;
            region(
                || "outer".into(),
                || {
                    spin(3)?;
                    region(|| "inner".into(), || spin(4))?;
                    region(|| "inner".into(), || spin(4))?;
                    Ok(())
                },
            )?;
            phase("backward")?;
            spin(1)?;
            Ok(7)
        })
        .unwrap();
        let wall = wall.elapsed().as_secs_f64();
        assert_eq!(value, 7);
        let labels: Vec<&str> = times.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["forward", "outer", "inner", "backward"]);
        let get = |l: &str| times.iter().find(|t| t.label == l).unwrap();
        assert_eq!(get("inner").laps, 2);
        assert!(get("inner").seconds >= 0.008, "{times:?}");
        assert!(get("outer").seconds >= 0.003, "{times:?}");
        assert!(get("forward").seconds >= 0.002, "{times:?}");
        assert!(get("backward").seconds >= 0.001, "{times:?}");
        // No moment counts twice (the outer region's own time leaves out the inner regions'):
        // the labels add up to no more than the run.
        let total: f64 = times.iter().map(|t| t.seconds).sum();
        assert!(
            total <= wall,
            "labels add up to {total} s in a {wall} s run: {times:?}"
        );
        assert!(!recording(), "the recorder stays installed after the run");
        // On the CPU the host's clock is the device's.
        for t in &times {
            let d = (t.host_seconds - t.seconds).abs();
            assert!(
                d < 1e-3,
                "{}: host {} s, device {} s",
                t.label,
                t.host_seconds,
                t.seconds
            );
        }
    }

    #[test]
    fn time_before_the_first_phase_is_labelled_as_such() {
        let (_, times) = record(&Device::Cpu, || {
            region(|| "early".into(), || spin(1))?;
            spin(1)?;
            phase("late")
        })
        .unwrap();
        let labels: Vec<&str> = times.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, [OUTSIDE, "early", "late"]);
        assert!(times[1].seconds >= 0.001);
    }

    #[test]
    fn a_forward_region_names_its_backward_pass() {
        assert_eq!(mirror(), None, "nothing is recorded");
        let (label, _) = record(&Device::Cpu, || {
            phase("forward: other")?;
            assert_eq!(mirror(), None, "a phase is not a region");
            let label = region(|| "forward: dense 4 -> 8".into(), || Ok(mirror()))?;
            assert_eq!(label.as_deref(), Some("backward: dense 4 -> 8"));
            phase("backward")?;
            backward_region(&label, || spin(1))?;
            backward_region(&None, || spin(1))?;
            Ok(label)
        })
        .unwrap();
        assert_eq!(label.as_deref(), Some("backward: dense 4 -> 8"));
    }

    #[test]
    fn regions_run_their_work_when_nothing_is_recorded() {
        let mut built = false;
        let v = region(
            || {
                built = true;
                "never".into()
            },
            || Ok(5),
        )
        .unwrap();
        assert_eq!(v, 5);
        assert!(!built, "the label is built only while recording");
        phase("nothing").unwrap();
    }

    #[test]
    fn a_failing_step_uninstalls_the_recorder_and_nesting_is_refused() {
        let dev = Device::Cpu;
        let err = record(&dev, || -> Result<()> { candle_core::bail!("broken step") }).unwrap_err();
        assert!(err.to_string().contains("broken step"));
        assert!(!recording());
        let err = record(&dev, || record(&dev, || Ok(())).map(|_| ())).unwrap_err();
        assert!(err.to_string().contains("already being recorded"), "{err}");
        assert!(!recording());
    }
}
