use overseer_lm::*;
use overseer_lm::candle_core::{Tensor, Device, quantized::{QTensor, GgmlDType}};
fn main() -> Result<()> {
    let p = std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = Model::load(p, &LoadOptions::default())?;
    let toks = vec![1u32, 504, 3458, 282];
    let mut s = m.session(1);
    let all = m.forward(&mut s, &[toks.clone()], ForwardOptions::default().logits(Logits::All))?;
    let mut s = m.session(1);
    for i in 0..toks.len() {
        let l = m.forward(&mut s, &[vec![toks[i]]], ForwardOptions::default())?;
        let want = all.narrow(1, i, 1)?.squeeze(1)?;
        let d = (l - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        println!("pos {i}: diff {d}");
    }
    let pts = vec![HookPoint::ResidPre(0), HookPoint::AttnOut(0), HookPoint::MlpOut(0), HookPoint::ResidPre(1)];
    let mut a = RawCapture::new(pts.clone(), Positions::All);
    let mut s = m.session(1);
    m.forward(&mut s, &[toks.clone()], ForwardOptions::default().with_hooks(Some(&mut a)))?;
    let mut b = RawCapture::new(pts.clone(), Positions::All);
    let mut s = m.session(1);
    m.forward(&mut s, &[vec![toks[0]]], ForwardOptions::default().with_hooks(Some(&mut b)))?;
    for p in &pts {
        let x = a.at(*p)[0].narrow(1, 0, 1)?;
        let y = b.at(*p)[0].clone();
        let d = (x - &y)?.abs()?.max_all()?.to_scalar::<f32>()?;
        println!("{p:?}: {d} scale {}", y.abs()?.max_all()?.to_scalar::<f32>()?);
    }
    // QLinear m-dependence
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (64, 576), &dev)?;
    let q = QLinear::new(QTensor::quantize(&w, GgmlDType::Q4_1)?)?;
    let x = Tensor::randn(0f32, 1.0, (1, 5, 576), &dev)?;
    let y = q.forward(&x)?;
    for i in 0..5 {
        let yi = q.forward(&x.narrow(1, i, 1)?)?;
        let d = (yi - y.narrow(1, i, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        println!("row {i}: {d}");
    }
    Ok(())
}
