//! How many of the GPUs a job asks for (`resources: {gpus: N}`) each kind can use, and what a
//! job leaves idle of them: the engine warns about those (`dag::gpu_use`).

/// How many of the GPUs a job is given its kind can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuUse {
    /// None: it runs on the CPU.
    None,
    /// The first: its model runs there.
    One,
    /// One for each of a step's micro-batches (`grad_accum`): the data parallelism of pretraining
    /// and fine-tuning.
    MicroBatches,
    /// Any number: an `exec` program sees them all in `CUDA_VISIBLE_DEVICES`.
    Any,
}

impl GpuUse {
    /// What a job with `params` (canonical, defaults filled in) leaves idle of `asked` GPUs, and
    /// what would use them; `None` when it can use them all.
    pub fn idle(self, params: &serde_json::Value, asked: usize) -> Option<String> {
        let idle = |used: usize| match asked - used {
            1 if asked == 1 => "the GPU would stay idle".to_string(),
            1 => "1 would stay idle".to_string(),
            n => format!("{n} would stay idle"),
        };
        match self {
            GpuUse::Any => None,
            _ if asked == 0 => None,
            GpuUse::None => Some(format!("it runs on the CPU: {}", idle(0))),
            GpuUse::One if asked > 1 => Some(format!("it runs on one: {}", idle(1))),
            GpuUse::One => None,
            GpuUse::MicroBatches => {
                let count = |name: &str| params.get(name).and_then(|v| v.as_u64()).unwrap_or(1);
                let (micro, batch) = (count("grad_accum") as usize, count("batch_size") as usize);
                if micro >= asked {
                    return None;
                }
                Some(format!(
                    "a step has {micro} micro-batch{} (grad_accum), one to a GPU: {} ({})",
                    if micro == 1 { "" } else { "es" },
                    idle(micro),
                    flora_stages::model::device::spread_advice(micro, batch, asked)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gpus_a_kind_cannot_use_are_named() {
        let none = json!({});
        assert_eq!(GpuUse::Any.idle(&none, 8), None);
        assert_eq!(GpuUse::None.idle(&none, 0), None);
        assert_eq!(
            GpuUse::None.idle(&none, 1).unwrap(),
            "it runs on the CPU: the GPU would stay idle"
        );
        assert_eq!(
            GpuUse::None.idle(&none, 2).unwrap(),
            "it runs on the CPU: 2 would stay idle"
        );
        assert_eq!(GpuUse::One.idle(&none, 1), None);
        assert_eq!(
            GpuUse::One.idle(&none, 3).unwrap(),
            "it runs on one: 2 would stay idle"
        );
    }

    #[test]
    fn pretraining_uses_a_gpu_for_each_micro_batch_of_a_step() {
        let p = |g: u64, b: u64| json!({"grad_accum": g, "batch_size": b});
        assert_eq!(GpuUse::MicroBatches.idle(&p(4, 16), 4), None);
        assert_eq!(GpuUse::MicroBatches.idle(&p(8, 16), 4), None);
        assert_eq!(
            GpuUse::MicroBatches.idle(&p(1, 64), 4).unwrap(),
            "a step has 1 micro-batch (grad_accum), one to a GPU: 3 would stay idle \
             (`grad_accum: 4` with `batch_size: 16` would use every GPU for 64 sequences a step; \
             now 64)"
        );
        assert_eq!(
            GpuUse::MicroBatches.idle(&p(2, 21), 4).unwrap(),
            "a step has 2 micro-batches (grad_accum), one to a GPU: 2 would stay idle \
             (`grad_accum: 4` with `batch_size: 11` would use every GPU for 44 sequences a step; \
             now 42)"
        );
    }
}
