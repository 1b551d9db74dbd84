//! Data parallelism over a job's devices: a step's micro-batches (`grad_accum` of them) are dealt
//! to the devices, micro-batch m to device m mod n. Device 0 holds the weights and LAMB's moments
//! and takes the update; each other device has a worker thread that copies the weights at the
//! start of the step, runs its micro-batches and hands their gradients to device 0. The
//! gradients are added there in micro-batch order, as a single device adds them, so a run on n
//! devices takes the steps of a run on one with the same `grad_accum` (a test checks that on the
//! CPU, bit for bit).
//!
//! Every device is used from one host thread only: candle's CUDA device issues its work on the
//! calling thread's default stream, and flora runs without cross-stream events
//! (`model/device.rs`), so the hand-overs between threads wait for the streams instead: device 0's
//! update is finished before a worker copies the weights, and a worker's copies of its gradients
//! are finished before device 0 reads them.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use super::{micro_step, Attention, Config, Params, Weights};

/// What one micro-batch gave: its mean masked loss, right guesses, masked tokens and gradients
/// (on device 0).
pub(super) type MicroResult = (f64, usize, usize, HashMap<String, Tensor>);

/// One step's work for a worker: the weights (device 0's tensors) and its micro-batches, each
/// with its index in the step and its rows of token ids.
struct Work {
    weights: HashMap<String, Tensor>,
    step: u64,
    micro_batches: Vec<(usize, Vec<Vec<u32>>)>,
}

type Answer = Result<Vec<(usize, MicroResult)>, String>;

/// A worker thread's stack: the main thread's 8 MiB on Linux.
const WORKER_STACK: usize = 8 << 20;

struct Worker {
    name: String,
    work: Option<mpsc::Sender<Work>>,
    answers: mpsc::Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
}

/// The devices after the first, each with its worker thread.
pub(super) struct Replicas {
    primary: Device,
    workers: Vec<Worker>,
}

impl Replicas {
    /// With more than one of `devices`: lets them copy to each other directly where they can
    /// (`device::connect_peers`), and starts a worker for each after the first, which holds the
    /// weights. `None` for one device.
    pub(super) fn start(
        devices: &[Device],
        cfg: &Config,
        p: &Params,
        compute: candle_core::DType,
        attention: Attention,
    ) -> Result<Option<Replicas>, String> {
        let [primary, others @ ..] = devices else {
            return Ok(None);
        };
        if others.is_empty() {
            return Ok(None);
        }
        for note in crate::model::device::connect_peers(devices)? {
            eprintln!("pretrain: {note}");
        }
        let mut workers = Vec::with_capacity(others.len());
        for (i, dev) in others.iter().enumerate() {
            let name = format!("{} (device {})", crate::model::device::name(dev), i + 1);
            let (work_tx, work_rx) = mpsc::channel::<Work>();
            let (answer_tx, answer_rx) = mpsc::channel::<Answer>();
            let replica = Replica {
                dev: dev.clone(),
                primary: primary.clone(),
                cfg: cfg.clone(),
                p: p.clone(),
                compute,
                attention,
            };
            let thread = std::thread::Builder::new()
                .name(format!("pretrain-device-{}", i + 1))
                // As deep as the main thread's: candle's backward pass walks the graph by recursion.
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    for work in work_rx {
                        let answer = replica.run(&work);
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
            workers,
        }))
    }

    /// Devices in all, device 0 included.
    pub(super) fn devices(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs one step's micro-batches (`rows` of each, in order) on every device: those of
    /// device 0 on `w` in this thread, the others on their workers. Returns each micro-batch's
    /// result, in order, with every gradient on device 0.
    pub(super) fn step(
        &self,
        w: &Weights,
        cfg: &Config,
        p: &Params,
        step: u64,
        rows: &[Vec<&[u32]>],
    ) -> Result<Vec<MicroResult>, String> {
        let n = self.devices();
        // The last update must be done before a worker reads the weights.
        self.primary.synchronize().map_err(|e| e.to_string())?;
        let weights = w.tensors();
        let mut sent = vec![false; self.workers.len()];
        for (k, worker) in self.workers.iter().enumerate() {
            let micro_batches: Vec<(usize, Vec<Vec<u32>>)> = rows
                .iter()
                .enumerate()
                .filter(|(m, _)| m % n == k + 1)
                .map(|(m, r)| (m, r.iter().map(|row| row.to_vec()).collect()))
                .collect();
            if micro_batches.is_empty() {
                continue;
            }
            let work = Work {
                weights: weights.clone(),
                step,
                micro_batches,
            };
            let sender = worker.work.as_ref().expect("open until drop");
            sender
                .send(work)
                .map_err(|_| format!("the worker for {} has ended", worker.name))?;
            sent[k] = true;
        }
        let mut results: Vec<Option<MicroResult>> = (0..rows.len()).map(|_| None).collect();
        // Device 0's own micro-batches run while the workers run theirs; an error here still
        // waits for the workers' answers, so that none is left for the next step.
        let mut failure = None;
        for (m, r) in rows.iter().enumerate().filter(|(m, _)| m % n == 0) {
            match micro_step(w, cfg, r, p, step, m as u64, &self.primary) {
                Ok(result) => results[m] = Some(result),
                Err(e) => {
                    let device = crate::model::device::name(&self.primary);
                    failure = Some(format!("on {device} (device 0): {e}"));
                    break;
                }
            }
        }
        for (worker, _) in self.workers.iter().zip(&sent).filter(|(_, &sent)| sent) {
            match worker.answers.recv() {
                Ok(Ok(answers)) => {
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

impl Drop for Replicas {
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

/// What a worker thread works with: its device, device 0, and the run's model and params.
struct Replica {
    dev: Device,
    primary: Device,
    cfg: Config,
    p: Params,
    compute: candle_core::DType,
    attention: Attention,
}

impl Replica {
    /// A step's work: the weights copied to this device, the micro-batches, their gradients
    /// copied to device 0, and those copies finished.
    fn run(&self, work: &Work) -> Answer {
        let Replica {
            dev,
            primary,
            cfg,
            p,
            compute,
            attention,
        } = self;
        let text = |e: candle_core::Error| e.to_string();
        let mut tensors = HashMap::with_capacity(work.weights.len());
        for (name, t) in &work.weights {
            tensors.insert(name.clone(), t.to_device(dev).map_err(text)?);
        }
        let mut w = Weights::from_tensors(cfg, tensors)?;
        w.compute = *compute;
        w.attention = *attention;
        let mut out = Vec::with_capacity(work.micro_batches.len());
        for (m, rows) in &work.micro_batches {
            let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
            let (loss, correct, n, grads) =
                micro_step(&w, cfg, &rows, p, work.step, *m as u64, dev).map_err(text)?;
            let mut moved = HashMap::with_capacity(grads.len());
            for (name, g) in grads {
                moved.insert(name, g.to_device(primary).map_err(text)?);
            }
            out.push((*m, (loss, correct, n, moved)));
        }
        // The copies run on this thread's stream of device 0; device 0's thread reads them next.
        primary.synchronize().map_err(text)?;
        Ok(out)
    }
}
