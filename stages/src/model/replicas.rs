//! Data parallelism over a job's devices: a training step's micro-batches (`grad_accum` of them)
//! are dealt to the devices, micro-batch m to device m mod n. Device 0 holds the weights and the
//! optimizer's moments and takes the update; each other device has a worker thread that copies
//! the weights at the start of the step, runs its micro-batches and hands their gradients to
//! device 0. The gradients are added there in micro-batch order ([`GradSum`]), as a single
//! device adds them, so a run on n devices takes the steps of a run on one with the same
//! `grad_accum` (tests check that on the CPU, bit for bit, for pretraining and fine-tuning).
//!
//! What a micro-batch computes is the stage's ([`MicroBatchJob`]); this module only deals the
//! micro-batches, moves weights and gradients, and reports a device's failure by its name.
//! Batches on unchanged weights (a validation's rounds) reuse the copies a worker already has
//! ([`Replicas::step_unchanged`]).
//!
//! Every device is used from one host thread only: candle's CUDA device issues its work on the
//! calling thread's default stream, and flora runs without cross-stream events
//! (`model/device.rs`), so the hand-overs between threads wait for the streams instead: device 0's
//! update is finished before a worker copies the weights, and a worker's copies of its gradients
//! are finished before device 0 reads them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};

use super::roberta::{Attention, Params as Weights};

/// Gradients by parameter name.
pub type Grads = HashMap<String, Tensor>;

/// What a stage computes on one batch, on whichever device it is dealt to: a micro-batch of a
/// training step, with its gradients, or a batch to validate or predict, with none.
pub trait MicroBatchJob: Send + Sync + 'static {
    /// One batch, as a worker receives it.
    type Batch: Send + 'static;
    /// What a batch gives besides its gradients (its loss, its counts, its predictions).
    type Out: Send + 'static;
    /// The batch `micro` of step `step`, on weights `w` held on `dev`.
    fn run(
        &self,
        w: &Weights,
        step: u64,
        micro: usize,
        batch: &Self::Batch,
        dev: &Device,
    ) -> candle_core::Result<(Self::Out, Grads)>;
}

/// One step's work for a worker: the weights (device 0's tensors; none when its copy of them
/// is current) and its micro-batches, each with its index in the step.
struct Work<B> {
    weights: Option<HashMap<String, Tensor>>,
    step: u64,
    micro_batches: Vec<(usize, B)>,
}

/// A worker's answer: each of its micro-batches' results, gradients on device 0.
type Answer<O> = Result<Vec<(usize, (O, Grads))>, String>;

/// A worker thread's stack: the main thread's 8 MiB on Linux.
const WORKER_STACK: usize = 8 << 20;

struct Worker<J: MicroBatchJob> {
    name: String,
    work: Option<mpsc::Sender<Work<J::Batch>>>,
    answers: mpsc::Receiver<Answer<J::Out>>,
    thread: Option<JoinHandle<()>>,
}

/// The devices after the first, each with its worker thread.
pub struct Replicas<J: MicroBatchJob> {
    primary: Device,
    job: Arc<J>,
    workers: Vec<Worker<J>>,
    /// Whether each worker holds a copy of the weights as they were at the last `step`.
    current: RefCell<Vec<bool>>,
}

impl<J: MicroBatchJob> Replicas<J> {
    /// With more than one of `devices`: lets them copy to each other directly where they can
    /// (`device::connect_peers`), and starts a worker for each after the first, which holds the
    /// weights. The workers compute in `compute` with `attention`, as the weights on device 0
    /// do. `None` for one device. `stage` names the threads and the notes.
    pub fn start(
        stage: &str,
        devices: &[Device],
        job: J,
        compute: DType,
        attention: Attention,
    ) -> Result<Option<Replicas<J>>, String> {
        let [primary, others @ ..] = devices else {
            return Ok(None);
        };
        if others.is_empty() {
            return Ok(None);
        }
        for note in crate::model::device::connect_peers(devices)? {
            eprintln!("{stage}: {note}");
        }
        let job = Arc::new(job);
        let mut workers = Vec::with_capacity(others.len());
        for (i, dev) in others.iter().enumerate() {
            let name = format!("{} (device {})", crate::model::device::name(dev), i + 1);
            let (work_tx, work_rx) = mpsc::channel::<Work<J::Batch>>();
            let (answer_tx, answer_rx) = mpsc::channel::<Answer<J::Out>>();
            let replica = Replica {
                dev: dev.clone(),
                primary: primary.clone(),
                job: Arc::clone(&job),
                compute,
                attention,
            };
            let thread = std::thread::Builder::new()
                .name(format!("{stage}-device-{}", i + 1))
                // As deep as the main thread's: candle's backward pass walks the graph by recursion.
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    let mut copy = None;
                    for work in work_rx {
                        let answer = replica.run(&work, &mut copy);
                        drop(work);
                        if answer_tx.send(answer).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("cannot start the thread for {name}: {e}"))?;
            workers.push(Worker {
                name,
                work: Some(work_tx),
                answers: answer_rx,
                thread: Some(thread),
            });
        }
        Ok(Some(Replicas {
            primary: primary.clone(),
            job,
            current: RefCell::new(vec![false; workers.len()]),
            workers,
        }))
    }

    /// Devices in all, device 0 included.
    pub fn devices(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs one step's micro-batches on every device: those of device 0 on `w` in this thread,
    /// the others on their workers, each on a copy of `w` made for this step. Returns each
    /// micro-batch's result, in order, with every gradient on device 0.
    pub fn step(
        &self,
        w: &Weights,
        step: u64,
        micro_batches: Vec<J::Batch>,
    ) -> Result<Vec<(J::Out, Grads)>, String> {
        self.current.borrow_mut().fill(false);
        self.deal(w, step, micro_batches)
    }

    /// As [`Replicas::step`], on weights unchanged since the last `step` (or
    /// `step_unchanged`): a worker that copied them then computes on that copy, and only the
    /// others copy them now.
    pub fn step_unchanged(
        &self,
        w: &Weights,
        step: u64,
        batches: Vec<J::Batch>,
    ) -> Result<Vec<(J::Out, Grads)>, String> {
        self.deal(w, step, batches)
    }

    fn deal(
        &self,
        w: &Weights,
        step: u64,
        micro_batches: Vec<J::Batch>,
    ) -> Result<Vec<(J::Out, Grads)>, String> {
        let n = self.devices();
        let count = micro_batches.len();
        let mut own = Vec::new();
        let mut dealt: Vec<Vec<(usize, J::Batch)>> = (1..n).map(|_| Vec::new()).collect();
        for (m, batch) in micro_batches.into_iter().enumerate() {
            match m % n {
                0 => own.push((m, batch)),
                k => dealt[k - 1].push((m, batch)),
            }
        }
        // The last update must be done before a worker reads the weights.
        self.primary.synchronize().map_err(|e| e.to_string())?;
        let weights = w.tensors();
        let mut sent = vec![false; self.workers.len()];
        let mut current = self.current.borrow_mut();
        for (k, (worker, micro_batches)) in self.workers.iter().zip(dealt).enumerate() {
            if micro_batches.is_empty() {
                continue;
            }
            let work = Work {
                weights: (!current[k]).then(|| weights.clone()),
                step,
                micro_batches,
            };
            // Until its answer says otherwise, the worker's copy is in doubt.
            current[k] = false;
            let sender = worker.work.as_ref().expect("open until drop");
            sender
                .send(work)
                .map_err(|_| format!("the worker for {} has ended", worker.name))?;
            sent[k] = true;
        }
        let mut results: Vec<Option<(J::Out, Grads)>> = (0..count).map(|_| None).collect();
        // Device 0's own micro-batches run while the workers run theirs; an error here still
        // waits for the workers' answers, so that none is left for the next step.
        let mut failure = None;
        for (m, batch) in &own {
            match self.job.run(w, step, *m, batch, &self.primary) {
                Ok(result) => results[*m] = Some(result),
                Err(e) => {
                    let device = crate::model::device::name(&self.primary);
                    failure = Some(format!("on {device} (device 0): {e}"));
                    break;
                }
            }
        }
        for (k, worker) in self.workers.iter().enumerate().filter(|(k, _)| sent[*k]) {
            match worker.answers.recv() {
                Ok(Ok(answers)) => {
                    current[k] = true;
                    for (m, result) in answers {
                        results[m] = Some(result);
                    }
                }
                Ok(Err(e)) => {
                    failure.get_or_insert(format!("on {}: {e}", worker.name));
                }
                Err(_) => {
                    failure.get_or_insert(format!("the worker for {} has ended", worker.name));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every micro-batch was dealt to a device"))
            .collect())
    }
}

impl<J: MicroBatchJob> Drop for Replicas<J> {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            // Closing the channel ends the worker's loop.
            worker.work.take();
            if let Some(t) = worker.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// What a worker thread works with: its device, device 0, the stage's job, and the weights'
/// compute type and attention.
struct Replica<J> {
    dev: Device,
    primary: Device,
    job: Arc<J>,
    compute: DType,
    attention: Attention,
}

impl<J: MicroBatchJob> Replica<J> {
    /// A step's work: the weights copied to this device (kept in `copy` for the next step on
    /// unchanged weights), the micro-batches, their gradients copied to device 0, and those
    /// copies finished.
    fn run(&self, work: &Work<J::Batch>, copy: &mut Option<Weights>) -> Answer<J::Out> {
        let text = |e: candle_core::Error| e.to_string();
        if let Some(weights) = &work.weights {
            // The old copy goes first: a device holds one copy of the weights at a time.
            *copy = None;
            let mut w = Weights::copy_on(weights, &self.dev).map_err(text)?;
            w.compute = self.compute;
            w.attention = self.attention;
            *copy = Some(w);
        }
        let w = copy.as_ref().ok_or("no weights were sent to this device")?;
        let mut out = Vec::with_capacity(work.micro_batches.len());
        for (m, batch) in &work.micro_batches {
            let (result, grads) = self
                .job
                .run(w, work.step, *m, batch, &self.dev)
                .map_err(text)?;
            let mut moved = HashMap::with_capacity(grads.len());
            for (name, g) in grads {
                moved.insert(name, g.to_device(&self.primary).map_err(text)?);
            }
            out.push((*m, (result, moved)));
        }
        // The copies run on this thread's stream of device 0; device 0's thread reads them next.
        self.primary.synchronize().map_err(text)?;
        Ok(out)
    }
}

/// Batches that each device takes in one round of [`in_rounds`]. (One in tests, whose few
/// batches then take several rounds; rounds change no result.)
const BATCHES_PER_DEVICE_A_ROUND: usize = if cfg!(test) { 1 } else { 4 };

/// Runs `batches` (a validation's, predictions') on weights `w` that do not change meanwhile,
/// keeping what each gave and dropping any gradients: in rounds dealt to the devices of
/// `replicas` when there are several, each device copying the weights in the first round only
/// ([`Replicas::step_unchanged`]), else one by one by `job` on `dev`. `stop` is asked before each
/// round (each batch on one device); `None` when it said to stop.
pub fn in_rounds<J: MicroBatchJob>(
    job: &J,
    replicas: Option<&Replicas<J>>,
    w: &Weights,
    dev: &Device,
    batches: impl IntoIterator<Item = J::Batch>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Vec<J::Out>>, String> {
    let mut batches = batches.into_iter();
    let per_round = replicas.map_or(1, |r| r.devices() * BATCHES_PER_DEVICE_A_ROUND);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let round: Vec<J::Batch> = batches.by_ref().take(per_round).collect();
        if round.is_empty() {
            return Ok(Some(out));
        }
        if stop() {
            return Ok(None);
        }
        match replicas.filter(|_| round.len() > 1) {
            Some(replicas) => {
                let answers = if std::mem::take(&mut first) {
                    replicas.step(w, u64::MAX, round)?
                } else {
                    replicas.step_unchanged(w, u64::MAX, round)?
                };
                out.extend(answers.into_iter().map(|(result, _)| result));
            }
            None => {
                for (i, batch) in round.iter().enumerate() {
                    let (result, _) = job
                        .run(w, u64::MAX, i, batch, dev)
                        .map_err(|e| e.to_string())?;
                    out.push(result);
                }
            }
        }
    }
}

/// A step's gradients from its micro-batches, added in micro-batch order. Each micro-batch's
/// gradient is the mean over its own examples (masked tokens, rows); several are added weighted
/// by those counts, and [`GradSum::finish`]'s scale turns the sum back into a mean. A step of one
/// micro-batch takes its gradients as they are, with scale 1.
pub struct GradSum {
    grads: Grads,
    accumulating: bool,
    weight: usize,
}

impl GradSum {
    /// An empty sum for a step of `micro_batches`.
    pub fn new(micro_batches: usize) -> GradSum {
        GradSum {
            grads: HashMap::new(),
            accumulating: micro_batches > 1,
            weight: 0,
        }
    }

    /// Adds a micro-batch's gradients, the mean over its `weight` examples.
    pub fn add(&mut self, grads: Grads, weight: usize) -> candle_core::Result<()> {
        self.weight += weight;
        if !self.accumulating {
            self.grads = grads;
            return Ok(());
        }
        for (k, t) in grads {
            let t = (t * weight as f64)?;
            let sum = match self.grads.remove(&k) {
                Some(prev) => (prev + t)?,
                None => t,
            };
            self.grads.insert(k, sum);
        }
        Ok(())
    }

    /// The summed gradients and the scale that makes them the step's mean.
    pub fn finish(self) -> (Grads, f64) {
        let scale = if self.accumulating {
            1.0 / self.weight.max(1) as f64
        } else {
            1.0
        };
        (self.grads, scale)
    }
}

#[cfg(test)]
mod tests;
