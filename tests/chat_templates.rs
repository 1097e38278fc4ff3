//! Chat templates produce exactly the prompt text each model family expects. No model is
//! needed: llama.cpp recognises a template by its built-in name or by the markers in a
//! model's template source, and these tests pass both.

use rocm_llama::{apply_template, builtin_templates, template_for_architecture, ChatMessage, Error};

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("Hi!"),
        ChatMessage::assistant("Hello."),
        ChatMessage::user("2+2?"),
    ]
}

// Template sources in the shape model files carry (abridged, written for these tests): what
// matters to llama.cpp's detection is the family's markers.
const GEMMA3_SOURCE: &str = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";
const QWEN3_SOURCE: &str = "{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA3_SOURCE: &str = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const GEMMA3_EXPECTED: &str = "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n";
const CHATML_EXPECTED: &str = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n";
const LLAMA3_EXPECTED: &str = "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

#[test]
fn gemma3_merges_the_system_prompt_into_the_first_user_turn() {
    assert_eq!(apply_template("gemma", &conversation(), true).unwrap(), GEMMA3_EXPECTED);
    assert_eq!(apply_template(GEMMA3_SOURCE, &conversation(), true).unwrap(), GEMMA3_EXPECTED);
}

#[test]
fn qwen3_uses_chatml() {
    assert_eq!(apply_template("chatml", &conversation(), true).unwrap(), CHATML_EXPECTED);
    assert_eq!(apply_template(QWEN3_SOURCE, &conversation(), true).unwrap(), CHATML_EXPECTED);
}

#[test]
fn llama3_headers() {
    assert_eq!(apply_template("llama3", &conversation(), true).unwrap(), LLAMA3_EXPECTED);
    assert_eq!(apply_template(LLAMA3_SOURCE, &conversation(), true).unwrap(), LLAMA3_EXPECTED);
}

#[test]
fn without_the_generation_prompt_the_text_ends_after_the_last_turn() {
    let msgs = [ChatMessage::user("Hi!")];
    assert_eq!(apply_template("chatml", &msgs, false).unwrap(), "<|im_start|>user\nHi!<|im_end|>\n");
    assert_eq!(apply_template("gemma", &msgs, false).unwrap(), "<start_of_turn>user\nHi!<end_of_turn>\n");
}

#[test]
fn long_messages_grow_the_buffer() {
    let long = "x".repeat(100_000);
    let out = apply_template("chatml", &[ChatMessage::user(long.clone())], true).unwrap();
    assert!(out.contains(&long));
    assert!(out.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn unknown_templates_and_nul_bytes_are_errors() {
    assert!(matches!(apply_template("no-such-template", &conversation(), true), Err(Error::ChatTemplate(_))));
    assert!(matches!(apply_template("chatml", &[ChatMessage::user("a\0b")], true), Err(Error::NulByte { .. })));
}

#[test]
fn builtin_names_cover_the_families() {
    let names = builtin_templates();
    for n in ["gemma", "chatml", "llama3"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    for arch in ["gemma3", "llama", "qwen3", "phi3", "mistral"] {
        let t = template_for_architecture(arch).unwrap();
        assert!(names.iter().any(|x| x == t), "{arch} maps to unknown {t}");
    }
    assert_eq!(template_for_architecture("bert"), None);
}
