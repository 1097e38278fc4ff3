//! Chat templates produce exactly the prompt text each model family expects. No model is
//! needed: llama.cpp recognises a template by its built-in name or by the markers in a
//! model's template source, and these tests pass both.

mod common;

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

// ---------------------------------------------------------------------------------------------
// The models' own templates, rendered with Jinja. The templates are other projects' published
// files, fetched at test time by scripts/test/templates.sh (llama.cpp's models/templates from
// the llama-cpp-python sdist, and the axolotl wheel's chat_templates for Gemma 3); each
// expected text below is written from the family's documented prompt format.

mod jinja {
    use std::path::PathBuf;

    use rocm_llama::chat::render_jinja;
    use rocm_llama::{ChatMessage, ChatOptions, Error};

    fn templates() -> PathBuf {
        super::common::templates_dir()
    }

    fn source(name: &str) -> String {
        let path = templates().join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn render(name: &str, messages: &[ChatMessage], options: &ChatOptions, bos: &str, eos: &str) -> String {
        render_jinja(&source(name), messages, options, bos, eos).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn conversation() -> Vec<ChatMessage> {
        super::conversation()
    }

    #[test]
    fn gemma3_puts_the_system_prompt_in_the_first_user_turn() {
        let out = render("axolotl/gemma3.jinja", &conversation(), &ChatOptions::default(), "<bos>", "<eos>");
        assert_eq!(out, format!("<bos>{}", super::GEMMA3_EXPECTED));
    }

    #[test]
    fn qwen3_chatml_with_and_without_thinking() {
        let on = render("Qwen-Qwen3-0.6B.jinja", &conversation(), &ChatOptions::default(), "", "<|im_end|>");
        assert_eq!(on, super::CHATML_EXPECTED);
        let off = ChatOptions::default().kwarg("enable_thinking", false);
        let out = render("Qwen-Qwen3-0.6B.jinja", &conversation(), &off, "", "<|im_end|>");
        assert_eq!(out, format!("{}<think>\n\n</think>\n\n", super::CHATML_EXPECTED));
        // An earlier answer's reasoning is dropped from the history.
        let mut with_thought = conversation();
        with_thought[2] = ChatMessage::assistant("<think>\nadding\n</think>\n\nHello.");
        assert_eq!(
            render("Qwen-Qwen3-0.6B.jinja", &with_thought, &ChatOptions::default(), "", ""),
            super::CHATML_EXPECTED
        );
    }

    #[test]
    fn qwen3_lists_tools_as_json_in_the_system_turn() {
        let tools = serde_json::json!([{"type": "function", "function": {"name": "add", "description": "Adds <a> & b", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]);
        let out = render("Qwen-Qwen3-0.6B.jinja", &conversation(), &ChatOptions::default().tools(tools), "", "");
        // Python's json.dumps form, key order kept and nothing escaped, as transformers writes it.
        let listed = r#"<tools>
{"type": "function", "function": {"name": "add", "description": "Adds <a> & b", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
</tools>"#;
        assert!(out.starts_with("<|im_start|>system\nYou are terse.\n\n# Tools\n"), "{out}");
        assert!(out.contains(listed), "{out}");
    }

    #[test]
    fn llama3_1_header_turns_with_the_knowledge_date() {
        let system = "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|>";
        let rest = "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        let out = render(
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            &conversation(),
            &ChatOptions::default(),
            "<|begin_of_text|>",
            "<|eot_id|>",
        );
        assert_eq!(out, format!("<|begin_of_text|>{system}{rest}"));
    }

    #[test]
    fn llama3_2_dates_the_prompt_with_strftime_now() {
        let out = render(
            "meta-llama-Llama-3.2-3B-Instruct.jinja",
            &conversation(),
            &ChatOptions::default(),
            "<|begin_of_text|>",
            "<|eot_id|>",
        );
        // "Today Date: 29 Nov 2026": two digits, a month's abbreviation, four digits.
        let date = out.split("Today Date: ").nth(1).and_then(|s| s.split('\n').next()).unwrap();
        let parts: Vec<&str> = date.split(' ').collect();
        assert_eq!(parts.len(), 3, "{date}");
        assert!(parts[0].len() == 2 && parts[0].chars().all(|c| c.is_ascii_digit()), "{date}");
        assert!(
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].contains(&parts[1]),
            "{date}"
        );
        assert!(parts[2].len() == 4 && parts[2].starts_with("20"), "{date}");
        // The caller can fix the date.
        let fixed = ChatOptions::default().kwarg("date_string", "01 Jan 2025");
        let out = render("meta-llama-Llama-3.2-3B-Instruct.jinja", &conversation(), &fixed, "<|begin_of_text|>", "");
        assert!(out.contains("Today Date: 01 Jan 2025\n\nYou are terse.<|eot_id|>"), "{out}");
    }

    #[test]
    fn mistral_nemo_puts_the_system_prompt_in_the_last_user_turn() {
        let out = render(
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
            &conversation(),
            &ChatOptions::default(),
            "<s>",
            "</s>",
        );
        assert_eq!(out, "<s>[INST]Hi![/INST]Hello.</s>[INST]You are terse.\n\n2+2?[/INST]");
    }

    #[test]
    fn phi3_5_tags_each_turn() {
        let out = render(
            "microsoft-Phi-3.5-mini-instruct.jinja",
            &conversation(),
            &ChatOptions::default(),
            "<s>",
            "<|endoftext|>",
        );
        assert_eq!(out, "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\n2+2?<|end|>\n<|assistant|>\n");
        let no_prompt = ChatOptions::default().add_generation_prompt(false);
        let out = render("microsoft-Phi-3.5-mini-instruct.jinja", &conversation(), &no_prompt, "<s>", "<|endoftext|>");
        assert!(out.ends_with("2+2?<|end|>\n<|endoftext|>"), "{out}");
    }

    #[test]
    fn deepseek_r1_opens_a_think_block() {
        let think = ChatOptions::default().kwarg("enable_thinking", true);
        let bos = "<｜begin▁of▁sentence｜>";
        let out = render(
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            &conversation(),
            &think,
            bos,
            "<｜end▁of▁sentence｜>",
        );
        assert_eq!(out, format!("{bos}You are terse.<｜User｜>Hi!<｜Assistant｜>Hello.<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n"));
        let no_think = ChatOptions::default().kwarg("enable_thinking", false);
        let out = render("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", &conversation(), &no_think, bos, "");
        assert!(out.ends_with("<｜Assistant｜><think>\n</think>"), "{out}");
    }

    #[test]
    fn command_r_turn_tokens() {
        let out = render(
            "axolotl/cohere.jinja",
            &conversation(),
            &ChatOptions::default(),
            "<BOS_TOKEN>",
            "<|END_OF_TURN_TOKEN|>",
        );
        assert_eq!(
            out,
            "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are terse.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi!<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>2+2?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
        );
        // Command-R's tool-use template, with a tool: the preamble and the tool's signature.
        let tools = serde_json::json!([{"type": "function", "function": {"name": "add", "description": "Adds two numbers", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "first"}}, "required": ["a"]}}}]);
        let out = render(
            "CohereForAI-c4ai-command-r-plus-tool_use.jinja",
            &conversation(),
            &ChatOptions::default().tools(tools),
            "<BOS_TOKEN>",
            "",
        );
        assert!(out.starts_with("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|># Safety Preamble"), "{out}");
        assert!(out.contains("def add("), "{out}");
        assert!(out.ends_with("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"), "{out}");
    }

    /// Every published template in the set renders the conversation: no template feature
    /// that minijinja with Python's methods lacks. Templates that require something the plain
    /// conversation does not give say so through their own `raise_exception`, listed here.
    #[test]
    fn every_published_template_renders() {
        let dir = templates();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        paths.extend(std::fs::read_dir(dir.join("axolotl")).unwrap().map(|e| e.unwrap().path()));
        paths.retain(|p| p.extension().is_some_and(|e| e == "jinja"));
        paths.sort();
        assert!(paths.len() >= 100, "only {} templates", paths.len());
        let mut failed = Vec::new();
        for path in &paths {
            let source = std::fs::read_to_string(path).unwrap();
            let name = path.strip_prefix(&dir).unwrap().display().to_string();
            // Firefunction v2's template builds its system prompt from two variables of its own.
            let options = if name.contains("firefunction") {
                ChatOptions::default().kwarg("functions", "[]").kwarg("datetime", "2026-11-29")
            } else {
                ChatOptions::default()
            };
            // What `show` reports: each published template renders a plain conversation,
            // except firefunction's without its variables, which `show` says with the line.
            let renders = rocm_llama::inventory::template_renders(&source);
            if name.contains("firefunction") {
                assert!(renders.as_ref().is_err_and(|e| e.contains("line 21")), "{renders:?}");
            } else {
                assert_eq!(renders, Ok(()), "{name}");
            }
            match render_jinja(&source, &conversation(), &options, "<s>", "</s>") {
                Ok(out) => assert!(out.contains("2+2?"), "{name} dropped the last message:\n{out}"),
                Err(Error::ChatTemplate(msg)) if msg.contains("the template raised") => {
                    eprintln!("{name}: refuses the conversation: {msg}")
                }
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        assert!(failed.is_empty(), "{} of {} templates fail:\n{}", failed.len(), paths.len(), failed.join("\n"));
    }

    /// With the real model, loaded as its vocabulary alone: Gemma 3's published Jinja template
    /// and llama.cpp's built-in `gemma` format give the same tokens (the template writes
    /// `<bos>` itself; the built-in format leaves it to the tokenizer, and BOS is added once).
    #[test]
    fn gemma3_template_and_builtin_format_give_the_same_tokens() {
        let Some(path) = super::common::model_path() else { return };
        let model = rocm_llama::Model::load(&path, &rocm_llama::LoadConfig::default().vocab_only(true)).unwrap();
        assert!(model.is_vocab_only());
        let opts = ChatOptions::default();
        let jinja = rocm_llama::ChatTemplate::Jinja(source("axolotl/gemma3.jinja"));
        let builtin = rocm_llama::ChatTemplate::Builtin("gemma".into());
        let a = jinja.tokens(&model, &conversation(), &opts).unwrap();
        let b = builtin.tokens(&model, &conversation(), &opts).unwrap();
        assert_eq!(a, b);
        let bos = model.vocab().bos().unwrap();
        assert_eq!(a[0], bos);
        assert_ne!(a[1], bos, "one BOS, not two");
        // The model file has no template of its own: Model falls back to the built-in format.
        assert_eq!(rocm_llama::ChatTemplate::Model.tokens(&model, &conversation(), &opts).unwrap(), b);
        // Built-in formats take no template variables; asking is an error, not ignored.
        let kw = ChatOptions::default().kwarg("enable_thinking", false);
        assert!(matches!(builtin.prompt_with(&model, &conversation(), &kw), Err(Error::ChatTemplate(_))));
        // An empty or null tool list is no tools (Ollama's client sends `[]`).
        let plain = builtin.prompt_with(&model, &conversation(), &ChatOptions::default()).unwrap();
        for none in [serde_json::json!([]), serde_json::Value::Null] {
            let o = ChatOptions::default().tools(none);
            assert_eq!(builtin.prompt_with(&model, &conversation(), &o).unwrap(), plain);
        }
        // A vocabulary-only model cannot decode.
        let err = rocm_llama::Context::new(&model, &rocm_llama::ContextConfig::default()).err().unwrap();
        assert!(matches!(err, Error::InvalidState(_)), "{err}");
        // Named variants the file lacks are a clear error.
        let variant = rocm_llama::ChatTemplate::ModelVariant("tool_use".into());
        assert!(matches!(variant.prompt(&model, &conversation()), Err(Error::ChatTemplate(_))));
    }

    #[test]
    fn show_names_the_family() {
        use rocm_llama::inventory::template_family;
        assert_eq!(template_family(&source("axolotl/gemma3.jinja")), Some("gemma"));
        assert_eq!(template_family(&source("Qwen-Qwen3-0.6B.jinja")), Some("chatml"));
        assert_eq!(template_family(&source("meta-llama-Llama-3.1-8B-Instruct.jinja")), Some("llama3"));
        assert_eq!(template_family(&source("microsoft-Phi-3.5-mini-instruct.jinja")), Some("phi3"));
    }

    #[test]
    fn template_errors_name_the_line_and_the_reason() {
        let msgs = conversation();
        let opts = ChatOptions::default();
        let err = |src: &str| match render_jinja(src, &msgs, &opts, "", "") {
            Err(Error::ChatTemplate(m)) => m,
            other => panic!("{src:?} gave {other:?}"),
        };
        let m = err("line one\n{{ raise_exception('no system role, please') }}");
        assert!(m.contains("line 2") && m.contains("no system role, please"), "{m}");
        let m = err("{% for m in messages %}\n{{ m.content }\n{% endfor %}");
        assert!(m.contains("line 2"), "{m}");
        // As in Jinja2: a variable nobody set prints as nothing, but using it is an error.
        assert_eq!(render_jinja("[{{ no_such_variable }}]", &msgs, &opts, "", "").unwrap(), "[]");
        let m = err("{{ no_such_variable.field }}");
        assert!(m.contains("unknown variable"), "{m}");
        let m = err("{{ 'a' + no_such_variable }}");
        assert!(m.contains("line 1"), "{m}");
        // A loop without end stops with an error instead of running forever.
        let m = err("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}");
        assert!(m.contains("too long"), "{m}");
        // Recursion without end is bounded too.
        let m = err("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        assert!(!m.is_empty());
        // Variables that the conversation sets cannot be overridden by kwargs.
        let bad = ChatOptions::default().kwarg("messages", 1);
        assert!(matches!(render_jinja("{{ 1 }}", &msgs, &bad, "", ""), Err(Error::ChatTemplate(_))));
    }
}
