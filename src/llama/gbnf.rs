//! Checks on GBNF grammar text before llama.cpp parses it: its parser recurses once per level
//! of parentheses, so a deep enough nesting overflows the stack and kills the process.

use crate::error::{Error, Result};

/// The deepest nesting of parentheses accepted (a JSON schema at the converter's own depth
/// limit nests far less; hand-written grammars rarely pass ten).
pub(crate) const MAX_NESTING: usize = 128;

/// `Err` when `gbnf` nests parentheses deeper than [`MAX_NESTING`]. Parentheses inside string
/// literals, character classes and comments do not count.
pub(crate) fn check(gbnf: &str) -> Result<()> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut chars = gbnf.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' || c == '\r' {
                        break;
                    }
                }
            }
            '"' | '[' => {
                let close = if c == '"' { '"' } else { ']' };
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == close {
                        break;
                    }
                }
            }
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Err(Error::Grammar(format!(
            "the grammar nests parentheses {deepest} deep; at most {MAX_NESTING} are accepted"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_only_real_parentheses() {
        let deep = |n: usize| format!("root ::= {}\"a\"{}", "(".repeat(n), ")".repeat(n));
        assert!(check(&deep(MAX_NESTING)).is_ok());
        assert!(matches!(check(&deep(MAX_NESTING + 1)), Err(Error::Grammar(m)) if m.contains("nests")));
        let quoted = format!("root ::= \"{}\" [{}\\]] # {}\n", "(".repeat(500), "(".repeat(500), "(".repeat(500));
        assert!(check(&quoted).is_ok());
        assert!(check(r#"root ::= "\"(" ("a" | ("b"))"#).is_ok());
    }
}
