use super::*;

/// A job of one weight `x` (a vector): micro-batch m's loss is the mean of `x * batch`, so
/// its gradient is `batch / len`. It fails on the micro-batches it is told to, naming them.
struct Scaled {
    fail_on: Vec<usize>,
}

impl MicroBatchJob for Scaled {
    type Batch = Vec<f32>;
    type Out = (usize, f64);

    fn run(
        &self,
        w: &Weights,
        _step: u64,
        micro: usize,
        batch: &Vec<f32>,
        dev: &Device,
    ) -> candle_core::Result<((usize, f64), Grads)> {
        if self.fail_on.contains(&micro) {
            return Err(candle_core::Error::Msg(format!(
                "micro-batch {micro} cannot run"
            )));
        }
        let x = w.vars["x"].as_tensor();
        let b = Tensor::new(batch.as_slice(), dev)?;
        let loss = (x * b)?.mean_all()?;
        let grads = w.grads(&loss.backward()?);
        Ok(((micro, loss.to_scalar::<f32>()? as f64), grads))
    }
}

/// Replicas of `job` on three CPU devices.
fn on_three_devices(job: Scaled) -> Replicas<Scaled> {
    Replicas::start(
        "test",
        &vec![Device::Cpu; 3],
        job,
        DType::F32,
        Attention::Products,
    )
    .unwrap()
    .expect("three devices")
}

fn weights() -> Weights {
    weights_of(&[1., 2., 3.])
}

fn weights_of(x: &[f32]) -> Weights {
    let x = Tensor::new(x, &Device::Cpu).unwrap();
    Weights::copy_on(&HashMap::from([("x".to_string(), x)]), &Device::Cpu).unwrap()
}

/// The losses of a step's micro-batches.
fn losses(results: Vec<((usize, f64), Grads)>) -> Vec<f64> {
    results.into_iter().map(|((_, loss), _)| loss).collect()
}

/// The losses of `n` micro-batches computed on `w` by one device.
fn losses_on(w: &Weights, n: usize) -> Vec<f64> {
    let job = Scaled { fail_on: vec![] };
    (0..n)
        .map(|m| job.run(w, 0, m, &batches(n)[m], &Device::Cpu).unwrap().0 .1)
        .collect()
}

fn batches(n: usize) -> Vec<Vec<f32>> {
    (0..n).map(|m| vec![m as f32, 1.0, -(m as f32)]).collect()
}

/// Five micro-batches on three devices come back in order, each with its own loss and
/// gradients, as one device computes them.
#[test]
fn micro_batches_come_back_in_order_with_their_gradients() {
    let w = weights();
    let job = || Scaled { fail_on: vec![] };
    let replicas = on_three_devices(job());
    assert_eq!(replicas.devices(), 3);
    for step in 0..2 {
        let results = replicas.step(&w, step, batches(5)).unwrap();
        assert_eq!(results.len(), 5);
        for (m, ((micro, loss), grads)) in results.into_iter().enumerate() {
            let ((_, alone), expected) = job()
                .run(&w, step, m, &batches(5)[m], &Device::Cpu)
                .unwrap();
            assert_eq!(micro, m);
            assert_eq!(loss, alone);
            assert_eq!(
                grads["x"].to_vec1::<f32>().unwrap(),
                expected["x"].to_vec1::<f32>().unwrap()
            );
        }
    }
    // One device needs no replicas.
    assert!(Replicas::start(
        "test",
        &[Device::Cpu],
        job(),
        DType::F32,
        Attention::Products
    )
    .unwrap()
    .is_none());
}

/// A device that fails its micro-batches fails the step with its name and the cause, after the
/// other devices' answers are in; the next step runs, and the workers end with the replicas.
#[test]
fn a_device_that_fails_its_micro_batches_fails_the_step_with_its_name() {
    let w = weights();
    let job = Scaled { fail_on: vec![4] };
    let replicas = on_three_devices(job);
    // Micro-batch 4 goes to device 1 (4 mod 3).
    let err = replicas.step(&w, 0, batches(5)).unwrap_err();
    assert_eq!(err, "on cpu (device 1): micro-batch 4 cannot run");
    assert_eq!(replicas.step(&w, 1, batches(4)).unwrap().len(), 4);
    let job = Scaled { fail_on: vec![3] };
    let replicas = on_three_devices(job);
    let err = replicas.step(&w, 0, batches(5)).unwrap_err();
    assert_eq!(err, "on cpu (device 0): micro-batch 3 cannot run");
    drop(replicas);
}

/// Gradients summed over micro-batches are each weighted by its examples, and the scale makes
/// the sum their mean; a step of one micro-batch takes its gradients as they are.
#[test]
fn gradients_of_micro_batches_add_up_to_the_step_mean() {
    let g = |v: &[f32]| HashMap::from([("x".to_string(), Tensor::new(v, &Device::Cpu).unwrap())]);
    let mut sum = GradSum::new(2);
    sum.add(g(&[1., 2.]), 3).unwrap();
    sum.add(g(&[3., 0.]), 1).unwrap();
    let (grads, scale) = sum.finish();
    assert_eq!(scale, 0.25);
    assert_eq!(grads["x"].to_vec1::<f32>().unwrap(), vec![6., 6.]);
    let mut one = GradSum::new(1);
    one.add(g(&[1., 2.]), 7).unwrap();
    let (grads, scale) = one.finish();
    assert_eq!(scale, 1.0);
    assert_eq!(grads["x"].to_vec1::<f32>().unwrap(), vec![1., 2.]);
}

/// A step on unchanged weights lets each worker compute on the copy it made at the last step,
/// and sends the weights to a worker that has none of them: one that had no micro-batch when
/// they changed.
#[test]
fn steps_on_unchanged_weights_reuse_the_copies_workers_hold() {
    let (w, other) = (weights(), weights_of(&[-1., 5., 0.5]));
    let job = Scaled { fail_on: vec![] };
    let replicas = on_three_devices(job);
    assert_eq!(
        losses(replicas.step(&w, 0, batches(5)).unwrap()),
        losses_on(&w, 5)
    );
    assert_eq!(
        losses(replicas.step_unchanged(&w, 0, batches(5)).unwrap()),
        losses_on(&w, 5)
    );
    // New weights, and a step that deals nothing to the workers: their copies are stale, and
    // the next step on unchanged weights sends them the new ones.
    assert_eq!(
        losses(replicas.step(&other, 1, batches(1)).unwrap()),
        losses_on(&other, 1)
    );
    assert_eq!(
        losses(replicas.step_unchanged(&other, 1, batches(5)).unwrap()),
        losses_on(&other, 5)
    );
    // The workers keep their copies: handed other weights as if unchanged, they still compute
    // on the last ones (micro-batches 1, 2 and 4), and device 0 on what it is given (0 and 3).
    let mixed = losses(replicas.step_unchanged(&w, 2, batches(5)).unwrap());
    let (on_w, on_other) = (losses_on(&w, 5), losses_on(&other, 5));
    assert_eq!(
        mixed,
        [on_w[0], on_other[1], on_other[2], on_w[3], on_other[4]]
    );
}
