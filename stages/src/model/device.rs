//! Where a model stage's tensors live: the CPU, or a CUDA GPU when flora is built with the `cuda`
//! feature and the scheduler gave the job one (`flora run --gpus ...`).

use candle_core::Device;

/// The CUDA device with ordinal `index`, or a message saying why there is none.
pub fn cuda(index: usize) -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err(format!(
            "GPU {index}: this flora was built without CUDA; build it with \
             `scripts/cuda.sh cargo build --release --features cuda`, or leave out --gpus (--gpu) to \
             run on the CPU"
        ));
    }
    check_indices(&[index])?;
    let dev = Device::new_cuda(index).map_err(|e| format!("GPU {index}: {e}"))?;
    keep_freed_memory(&dev).map_err(|e| format!("GPU {index}: {e}"))?;
    no_stream_events(&dev);
    Ok(dev)
}

/// Refuses GPU indices this machine does not have, naming the ones it has. Only a CUDA build can
/// count its GPUs (through the driver, as `CUDA_VISIBLE_DEVICES` shows them); without one there
/// is nothing to check.
pub fn check_indices(gpus: &[usize]) -> Result<(), String> {
    // Without GPUs named, the driver is not asked (a CUDA build may run where there is none).
    if gpus.is_empty() {
        return Ok(());
    }
    match count() {
        Some(Ok(n)) => match gpus.iter().find(|&&g| g >= n) {
            Some(&g) => Err(missing(
                g,
                n,
                std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
            )),
            None => Ok(()),
        },
        Some(Err(e)) => Err(format!("GPU {}: {e}", gpus[0])),
        None => Ok(()),
    }
}

/// The message for GPU `index` on a machine that shows `count` of them, through
/// `CUDA_VISIBLE_DEVICES` where that is set.
fn missing(index: usize, count: usize, visible: Option<&str>) -> String {
    let visible = visible
        .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})"))
        .unwrap_or_default();
    match count {
        0 => format!("GPU {index}: this machine shows no CUDA device{visible}"),
        1 => format!("GPU {index}: this machine shows 1 CUDA device, GPU 0{visible}"),
        n => format!(
            "GPU {index}: this machine shows {n} CUDA devices, GPUs 0 to {}{visible}",
            n - 1
        ),
    }
}

/// How many CUDA devices the driver shows this process, or why it cannot say; `None` in a build
/// without CUDA.
#[cfg(feature = "cuda")]
fn count() -> Option<Result<usize, String>> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    Some(
        CudaContext::device_count()
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|e| format!("the CUDA driver cannot count the GPUs: {e}")),
    )
}

#[cfg(not(feature = "cuda"))]
fn count() -> Option<Result<usize, String>> {
    None
}

/// Tells the device's memory pool to keep freed memory for reuse instead of handing it back to
/// the driver at every synchronisation (its default release threshold is 0): a training step
/// synchronises a few times and would otherwise map its tens of gigabytes of activations afresh
/// every step. PyTorch's caching allocator does the same.
#[cfg(feature = "cuda")]
fn keep_freed_memory(dev: &Device) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let Device::Cuda(cuda) = dev else {
        return Ok(());
    };
    let stream = cuda.cuda_stream();
    let mut threshold = u64::MAX;
    // SAFETY: the device handle comes from the live context, and the release threshold attribute
    // takes a u64, which `threshold` is.
    #[allow(unsafe_code)]
    let set = unsafe {
        result::device::get_default_mem_pool(stream.context().cu_device()).and_then(|pool| {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        })
    };
    set.map_err(|e| format!("cannot set the memory pool's release threshold: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn keep_freed_memory(_dev: &Device) -> Result<(), String> {
    Ok(())
}

/// Turns off cudarc's event tracking for the buffers allocated from here on. It exists to order
/// a buffer's uses across streams, but with it on every allocation also creates two CUDA events
/// and every free destroys them: four driver calls on the host for each of the hundreds of
/// tensors a training step allocates. flora runs all its work on candle's one stream, where the
/// stream itself orders every use.
#[cfg(feature = "cuda")]
fn no_stream_events(dev: &Device) {
    if let Device::Cuda(cuda) = dev {
        // SAFETY: cross-stream ordering is the only thing the events provide, and every kernel,
        // copy and allocation of flora's runs on the device's one stream (candle's), so there is
        // no other stream to order against. `lamb_cuda.rs` checks that this still holds.
        #[allow(unsafe_code)]
        unsafe {
            cuda.disable_event_tracking()
        };
    }
}

#[cfg(not(feature = "cuda"))]
fn no_stream_events(_dev: &Device) {}

/// The device for a job given `gpus` by the scheduler: the first of them, else the CPU. A job
/// given several uses one (flora does not split a model across GPUs); the message says so.
pub fn for_job(gpus: &[usize], stage: &str) -> Result<Device, String> {
    match gpus {
        [] => Ok(Device::Cpu),
        [first, rest @ ..] => {
            if !rest.is_empty() {
                eprintln!("{stage}: given GPUs {gpus:?}; training runs on GPU {first} alone");
            }
            let dev = cuda(*first).map_err(|e| format!("{stage}: {e}"))?;
            eprintln!("{stage}: running on GPU {first}");
            Ok(dev)
        }
    }
}

/// The devices for a job that deals its steps' micro-batches to GPUs (pretraining and
/// fine-tuning: `grad_accum` micro-batches of `batch_size` sequences): one of `gpus` for each
/// micro-batch, as many as there are, else the CPU. A GPU that would get none is left idle, and
/// the message says how to use it.
pub fn for_data_parallel_job(
    gpus: &[usize],
    stage: &str,
    micro_batches: usize,
    batch_size: usize,
) -> Result<Vec<Device>, String> {
    let used = &gpus[..gpus.len().min(micro_batches.max(1))];
    if let Some(note) = idle_note(stage, gpus, used.len(), micro_batches, batch_size) {
        eprintln!("{note}");
    }
    if used.len() <= 1 {
        return Ok(vec![for_job(used, stage)?]);
    }
    let devices = used
        .iter()
        .map(|&g| cuda(g).map_err(|e| format!("{stage}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "{stage}: running on GPUs {}, data parallel: each step's micro-batches dealt to them in \
         turn, its update on GPU {}",
        list(used),
        used[0]
    );
    Ok(devices)
}

/// What a data-parallel job says when it leaves some of its `gpus` idle (it uses the first
/// `used`), and how to give each a micro-batch; `None` when it uses them all.
fn idle_note(
    stage: &str,
    gpus: &[usize],
    used: usize,
    micro_batches: usize,
    batch_size: usize,
) -> Option<String> {
    let idle = gpus.get(used..).filter(|idle| !idle.is_empty())?;
    Some(format!(
        "{stage}: given GPUs {}; a step has {micro_batches} micro-batch{} (grad_accum), one to a \
         GPU, so {} idle ({})",
        list(gpus),
        if micro_batches == 1 { "" } else { "es" },
        if idle.len() == 1 {
            format!("GPU {} stays", idle[0])
        } else {
            format!("GPUs {} stay", list(idle))
        },
        spread_advice(micro_batches, batch_size, gpus.len()),
    ))
}

/// The params that give each of `gpus` GPUs a micro-batch, for about the sequences a step of
/// `micro_batches` x `batch_size` has now.
pub fn spread_advice(micro_batches: usize, batch_size: usize, gpus: usize) -> String {
    let now = micro_batches.max(1) * batch_size.max(1);
    let share = now.div_ceil(gpus.max(1));
    format!(
        "`grad_accum: {gpus}` with `batch_size: {share}` would use every GPU for {} sequences a \
         step; now {now}",
        gpus * share
    )
}

/// Lets each pair of `devices` on different GPUs copy to each other directly (over NVLink or
/// PCIe) where the GPUs can: without peer access the driver stages every copy between them through
/// host memory. Returns a note for each pair that cannot or that the driver refuses; nothing on
/// the CPU or in a build without CUDA. Fails only if a GPU's context cannot be made current.
#[cfg(feature = "cuda")]
pub fn connect_peers(devices: &[Device]) -> Result<Vec<String>, String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let contexts: Vec<_> = devices
        .iter()
        .filter_map(|d| match d {
            Device::Cuda(c) => Some(c.cuda_stream().context().clone()),
            _ => None,
        })
        .collect();
    let mut notes = Vec::new();
    for a in &contexts {
        for b in &contexts {
            if a.cu_ctx() == b.cu_ctx() {
                continue;
            }
            let mut can = 0;
            // SAFETY: both device handles come from live contexts, and `can` is the int the call
            // writes.
            #[allow(unsafe_code)]
            let asked =
                unsafe { sys::cuDeviceCanAccessPeer(&mut can, a.cu_device(), b.cu_device()) };
            if asked != sys::CUresult::CUDA_SUCCESS || can == 0 {
                notes.push(format!(
                    "GPU {} cannot reach GPU {} directly; copies between them go through host memory",
                    a.ordinal(),
                    b.ordinal()
                ));
                continue;
            }
            a.bind_to_thread()
                .map_err(|e| format!("GPU {}: {e}", a.ordinal()))?;
            // SAFETY: `a`'s context is current on this thread (above) and `b`'s is live.
            #[allow(unsafe_code)]
            let enabled = unsafe { sys::cuCtxEnablePeerAccess(b.cu_ctx(), 0) };
            // Peer access only makes the copies faster: a refusal (too many peers, say) leaves
            // them to go through host memory, as where the GPUs cannot reach each other.
            if !matches!(
                enabled,
                sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
            ) {
                notes.push(format!(
                    "GPU {} refused peer access to GPU {} ({enabled:?}); copies between them go \
                     through host memory",
                    a.ordinal(),
                    b.ordinal()
                ));
            }
        }
    }
    // The first device's context is this thread's again, as before.
    if let Some(first) = contexts.first() {
        first
            .bind_to_thread()
            .map_err(|e| format!("GPU {}: {e}", first.ordinal()))?;
    }
    Ok(notes)
}

/// Lets GPUs copy to each other directly: nothing to do in a build without CUDA.
#[cfg(not(feature = "cuda"))]
pub fn connect_peers(_devices: &[Device]) -> Result<Vec<String>, String> {
    Ok(Vec::new())
}

/// GPU indices as `0, 1, 2`.
fn list(gpus: &[usize]) -> String {
    gpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short name for a device, for logs and reports (`cpu`, `cuda:0`).
pub fn name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpus_means_the_cpu() {
        assert!(for_job(&[], "pretrain").unwrap().is_cpu());
    }

    #[test]
    fn a_gpu_the_machine_lacks_is_named_with_those_it_has() {
        assert_eq!(
            missing(2, 0, None),
            "GPU 2: this machine shows no CUDA device"
        );
        assert_eq!(
            missing(1, 1, Some("3")),
            "GPU 1: this machine shows 1 CUDA device, GPU 0 (CUDA_VISIBLE_DEVICES=3)"
        );
        assert_eq!(
            missing(7, 4, None),
            "GPU 7: this machine shows 4 CUDA devices, GPUs 0 to 3"
        );
    }

    #[test]
    fn gpus_left_without_a_micro_batch_are_named_with_the_params_that_use_them() {
        assert_eq!(idle_note("pretrain", &[0, 1], 2, 2, 32), None);
        assert_eq!(
            idle_note("pretrain", &[0, 1, 2, 3], 1, 1, 64).unwrap(),
            "pretrain: given GPUs 0, 1, 2, 3; a step has 1 micro-batch (grad_accum), one to a \
             GPU, so GPUs 1, 2, 3 stay idle (`grad_accum: 4` with `batch_size: 16` would use \
             every GPU for 64 sequences a step; now 64)"
        );
        assert_eq!(
            idle_note("pretrain", &[4, 5, 6], 2, 2, 21).unwrap(),
            "pretrain: given GPUs 4, 5, 6; a step has 2 micro-batches (grad_accum), one to a GPU, \
             so GPU 6 stays idle (`grad_accum: 3` with `batch_size: 14` would use every GPU for \
             42 sequences a step; now 42)"
        );
        assert_eq!(
            spread_advice(2, 21, 4),
            "`grad_accum: 4` with `batch_size: 11` would use every GPU for 44 sequences a step; \
             now 42"
        );
    }

    #[test]
    fn a_data_parallel_job_without_gpus_runs_on_the_cpu() {
        let devices = for_data_parallel_job(&[], "pretrain", 4, 8).unwrap();
        assert_eq!(devices.len(), 1);
        assert!(devices[0].is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpus_for_a_data_parallel_job_without_the_cuda_build_are_a_clear_error() {
        let e = for_data_parallel_job(&[0, 1], "pretrain", 2, 8).unwrap_err();
        assert!(
            e.contains("pretrain: GPU 0: this flora was built without CUDA"),
            "{e}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_without_the_cuda_build_is_a_clear_error() {
        let e = for_job(&[0], "pretrain").unwrap_err();
        assert!(
            e.contains("pretrain: GPU 0: this flora was built without CUDA"),
            "{e}"
        );
    }
}
