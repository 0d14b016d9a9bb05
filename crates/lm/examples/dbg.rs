use overseer_lm::*;
fn main() -> Result<()> {
    for (file, fx) in [("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"), ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5")] {
        let m = Model::load(&std::path::Path::new("models").join(file), &LoadOptions::default())?;
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("crates/lm/tests/fixtures/logits-{fx}.json")).unwrap()).unwrap();
        for p in j["prompts"].as_array().unwrap() {
            let ids: Vec<u32> = p["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let want: Vec<u32> = p["llama_cpp"]["generated"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let mine_ids = m.encode_chat(&[Message::user(p["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap())], true)?;
            let mut s = m.session(1);
            let mut l = m.forward(&mut s, &[ids.clone()], ForwardOptions::default())?.squeeze(0)?.to_vec1::<f32>()?;
            let mut got = vec![];
            for _ in 0..want.len() {
                let t = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
                got.push(t);
                l = m.forward(&mut s, &[vec![t]], ForwardOptions::default())?.squeeze(0)?.to_vec1::<f32>()?;
            }
            let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            println!("{fx}: agree {agree}/{} (encode same: {}) {:?}", want.len(), mine_ids == ids, m.tokenizer().decode(&got)?);
        }
    }
    Ok(())
}
