//! A thinking model's reasoning apart from its answer: the text between `<think>` and
//! `</think>` (DeepSeek R1, Qwen 3, QwQ and others) goes to `reasoning_content`, as
//! llama-server and DeepSeek's API return it. [`ReasoningSplitter`] does it on a stream, piece
//! by piece, holding back only what could still be the start of a tag.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Which part of the reply a piece of text belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The model's reasoning (between the tags).
    Reasoning(String),
    /// The answer.
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but white space seen yet: an opening tag may still come.
    Start,
    Thinking,
    Answering,
}

/// Splits a reply into reasoning and content as it streams.
///
/// ```
/// use rocm_llama::reasoning::{Part, ReasoningSplitter};
/// let mut s = ReasoningSplitter::new(false);
/// let mut parts = s.push("<thi");
/// parts.extend(s.push("nk>Rain is likely.</think>Bring"));
/// parts.extend(s.push(" an umbrella."));
/// parts.extend(s.finish());
/// assert_eq!(parts, [Part::Reasoning("Rain is likely.".into()), Part::Content("Bring".into()), Part::Content(" an umbrella.".into())]);
/// ```
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    state: State,
    held: String,
    /// Right after the reasoning: the white space before the answer is dropped.
    skip_space: bool,
}

impl ReasoningSplitter {
    /// A splitter for one reply. `open` when the prompt already opened the reasoning (a
    /// template that ends its generation prompt with `<think>`): the reply starts inside it.
    pub fn new(open: bool) -> Self {
        ReasoningSplitter {
            state: if open { State::Thinking } else { State::Start },
            held: String::new(),
            skip_space: false,
        }
    }

    /// The parts `piece` completes (possibly none while a tag may be starting).
    pub fn push(&mut self, piece: &str) -> Vec<Part> {
        self.held.push_str(piece);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if t.is_empty() || OPEN.starts_with(t) {
                        return out;
                    } else {
                        self.state = State::Answering;
                    }
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(at) => {
                        let reasoning: String = self.held[..at].to_string();
                        self.held = self.held[at + CLOSE.len()..].to_string();
                        self.skip_space = true;
                        if !reasoning.is_empty() {
                            out.push(Part::Reasoning(reasoning));
                        }
                        self.state = State::Answering;
                    }
                    None => {
                        let keep = partial_suffix(&self.held, CLOSE);
                        let ready: String = self.held[..self.held.len() - keep].to_string();
                        self.held.drain(..ready.len());
                        if !ready.is_empty() {
                            out.push(Part::Reasoning(ready));
                        }
                        return out;
                    }
                },
                State::Answering => {
                    if self.skip_space {
                        let t = self.held.trim_start();
                        if t.is_empty() {
                            self.held.clear();
                            return out;
                        }
                        self.held = t.to_string();
                        self.skip_space = false;
                    }
                    if !self.held.is_empty() {
                        out.push(Part::Content(std::mem::take(&mut self.held)));
                    }
                    return out;
                }
            }
        }
    }

    /// What is still held when the reply ends.
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.held);
        if rest.is_empty() {
            return Vec::new();
        }
        match self.state {
            State::Thinking => vec![Part::Reasoning(rest)],
            _ => vec![Part::Content(rest)],
        }
    }
}

/// Splits a whole reply into (reasoning, content).
pub fn split_reasoning(reply: &str, open: bool) -> (String, String) {
    let mut s = ReasoningSplitter::new(open);
    let mut parts = s.push(reply);
    parts.extend(s.finish());
    join(parts)
}

/// Parts joined into (reasoning, content).
pub fn join(parts: impl IntoIterator<Item = Part>) -> (String, String) {
    let (mut reasoning, mut content) = (String::new(), String::new());
    for p in parts {
        match p {
            Part::Reasoning(t) => reasoning.push_str(&t),
            Part::Content(t) => content.push_str(&t),
        }
    }
    (reasoning, content)
}

/// How many bytes at the end of `s` are a proper prefix of `tag` (a tag that may be starting).
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_replies_split() {
        assert_eq!(split_reasoning("<think>a</think>b", false), ("a".into(), "b".into()));
        assert_eq!(split_reasoning("  <think>\nplan\n</think>\n\nanswer", false), ("\nplan\n".into(), "answer".into()));
        assert_eq!(split_reasoning("no tags", false), ("".into(), "no tags".into()));
        assert_eq!(split_reasoning("plan</think>answer", true), ("plan".into(), "answer".into()));
        assert_eq!(split_reasoning("<think>cut short", false), ("cut short".into(), "".into()));
        assert_eq!(split_reasoning("a <think> later", false), ("".into(), "a <think> later".into()));
    }

    /// Any cut of the reply into pieces gives the same parts, joined.
    #[test]
    fn every_cut_gives_the_same_split() {
        let reply = "<think>x < y and </thin is not the end</think>\n\n The answer is <b>4</b>.";
        let whole = split_reasoning(reply, false);
        for a in 0..=reply.len() {
            for b in a..=reply.len() {
                if !(reply.is_char_boundary(a) && reply.is_char_boundary(b)) {
                    continue;
                }
                let mut s = ReasoningSplitter::new(false);
                let mut parts = s.push(&reply[..a]);
                parts.extend(s.push(&reply[a..b]));
                parts.extend(s.push(&reply[b..]));
                parts.extend(s.finish());
                assert_eq!(join(parts), whole, "cut at {a}, {b}");
            }
        }
    }
}
