//! A bound on the size of every value a template makes, not only on its output.
//!
//! minijinja bounds the work of a render (fuel) and repeats a string at most to 100 MB, but
//! `~` and `+` concatenate without a limit: eight doublings of a 100 MB string took the whole
//! process down for memory, and its operators cannot be hooked. So before a template is
//! compiled, every `~`, `+` and `*` in its source is rewritten, by the spans of minijinja's
//! own parse, into a call of [`OP`], which refuses a result larger than [`MAX_VALUE`] and
//! otherwise computes it with minijinja's own operator (the same result as before). The
//! filters and methods that grow strings (`join`, `replace`, `indent`, `center`, `format`)
//! are bounded the same way in `jinja.rs`.

use std::sync::OnceLock;

use minijinja::machinery::{ast, parse, WhitespaceConfig};
use minijinja::{Environment, Error, ErrorKind, Value};

/// The name of the bounded operator function in the rewritten source.
pub(crate) const OP: &str = "__rocm_llama_op";

/// The largest string or list (in bytes or items) a template may make.
pub(crate) const MAX_VALUE: usize = 64 << 20;

/// `source` with every `~`, `+` and `*` turned into a call of [`OP`]. A source minijinja cannot
/// parse comes back as it is (compiling it reports the error).
pub(crate) fn rewrite(source: &str) -> String {
    let ws = WhitespaceConfig { keep_trailing_newline: false, lstrip_blocks: true, trim_blocks: true };
    let Ok(tree) = parse(source, "template", Default::default(), ws) else { return source.to_string() };
    let mut edits = Vec::new();
    stmt(&tree, source, &mut edits);
    apply(source, 0, edits)
}

/// One replacement of `source[start..end]`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

/// `source[offset..offset + text.len()]` with `edits` (outermost, not overlapping) applied;
/// `text` is that slice.
fn apply(text: &str, offset: usize, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| e.start);
    let mut out = String::with_capacity(text.len() + 32 * edits.len());
    let mut at = 0;
    for e in edits {
        let (start, end) = (e.start - offset, e.end - offset);
        if start < at || end > text.len() {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(&e.text);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Where `e` lies in the source. A node's own span does not always cover its operands (a
/// filter's starts at the filter's name), so the children's extents are taken in, and so are
/// parentheses left open or closed inside the range (an operand written in parentheses).
fn extent(e: &ast::Expr<'_>, source: &str) -> (usize, usize) {
    let s = match e {
        ast::Expr::Var(x) => x.span(),
        ast::Expr::Const(x) => x.span(),
        ast::Expr::Slice(x) => x.span(),
        ast::Expr::UnaryOp(x) => x.span(),
        ast::Expr::BinOp(x) => x.span(),
        ast::Expr::Compare(x) => x.span(),
        ast::Expr::IfExpr(x) => x.span(),
        ast::Expr::Filter(x) => x.span(),
        ast::Expr::Test(x) => x.span(),
        ast::Expr::GetAttr(x) => x.span(),
        ast::Expr::GetItem(x) => x.span(),
        ast::Expr::Call(x) => x.span(),
        ast::Expr::List(x) => x.span(),
        ast::Expr::Map(x) => x.span(),
    };
    let (mut start, mut end) = (s.start_offset as usize, s.end_offset as usize);
    for c in children(e) {
        let (a, b) = extent(c, source);
        start = start.min(a);
        end = end.max(b);
    }
    balance(source, start.min(source.len()), end.min(source.len()))
}

/// Widens `start..end` until its parentheses and brackets balance (quoted text skipped).
fn balance(source: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    let bytes = source.as_bytes();
    for _ in 0..64 {
        let (mut open, mut depth_min, mut quote) = (0i64, 0i64, None);
        for &c in &bytes[start..end] {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'\'' | b'"') => quote = Some(c),
                (None, b'(' | b'[' | b'{') => open += 1,
                (None, b')' | b']' | b'}') => {
                    open -= 1;
                    depth_min = depth_min.min(open);
                }
                _ => {}
            }
        }
        if depth_min < 0 {
            // A closing one without its opening: the opening lies before `start`.
            match bytes[..start].iter().rposition(|&c| matches!(c, b'(' | b'[' | b'{')) {
                Some(i) => start = i,
                None => break,
            }
        } else if open > 0 {
            match bytes[end..].iter().position(|&c| matches!(c, b')' | b']' | b'}')) {
                Some(i) => end += i + 1,
                None => break,
            }
        } else {
            break;
        }
    }
    (start, end)
}

/// The expressions directly inside `e`.
fn children<'e, 'a>(e: &'e ast::Expr<'a>) -> Vec<&'e ast::Expr<'a>> {
    use ast::Expr;
    let args = |list: &'e [ast::CallArg<'a>]| -> Vec<&'e Expr<'a>> {
        list.iter()
            .map(|a| match a {
                ast::CallArg::Pos(x)
                | ast::CallArg::Kwarg(_, x)
                | ast::CallArg::PosSplat(x)
                | ast::CallArg::KwargSplat(x) => x,
            })
            .collect()
    };
    match e {
        Expr::Var(_) | Expr::Const(_) => Vec::new(),
        Expr::Slice(s) => std::iter::once(&s.expr).chain([&s.start, &s.stop, &s.step].into_iter().flatten()).collect(),
        Expr::UnaryOp(u) => vec![&u.expr],
        Expr::BinOp(b) => vec![&b.left, &b.right],
        Expr::Compare(c) => std::iter::once(&c.expr).chain(c.ops.iter().map(|o| &o.expr)).collect(),
        Expr::IfExpr(i) => [&i.test_expr, &i.true_expr].into_iter().chain(i.false_expr.as_ref()).collect(),
        Expr::Filter(f) => f.expr.as_ref().into_iter().chain(args(&f.args)).collect(),
        Expr::Test(t) => std::iter::once(&t.expr).chain(args(&t.args)).collect(),
        Expr::GetAttr(g) => vec![&g.expr],
        Expr::GetItem(g) => vec![&g.expr, &g.subscript_expr],
        Expr::Call(c) => std::iter::once(&c.expr).chain(args(&c.args)).collect(),
        Expr::List(l) => l.items.iter().collect(),
        Expr::Map(m) => m.keys.iter().chain(m.values.iter()).collect(),
    }
}

/// The source text of `e` with the operators inside it rewritten.
fn text_of(e: &ast::Expr<'_>, source: &str) -> String {
    let (start, end) = extent(e, source);
    let mut edits = Vec::new();
    expr(e, source, &mut edits);
    apply(&source[start..end], start, edits)
}

fn stmts(list: &[ast::Stmt<'_>], source: &str, edits: &mut Vec<Edit>) {
    for s in list {
        stmt(s, source, edits);
    }
}

fn stmt(s: &ast::Stmt<'_>, source: &str, edits: &mut Vec<Edit>) {
    use ast::Stmt;
    match s {
        Stmt::Template(t) => stmts(&t.children, source, edits),
        Stmt::EmitExpr(e) => expr(&e.expr, source, edits),
        Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
        Stmt::ForLoop(f) => {
            expr(&f.iter, source, edits);
            if let Some(x) = &f.filter_expr {
                expr(x, source, edits);
            }
            stmts(&f.body, source, edits);
            stmts(&f.else_body, source, edits);
        }
        Stmt::IfCond(i) => {
            expr(&i.expr, source, edits);
            stmts(&i.true_body, source, edits);
            stmts(&i.false_body, source, edits);
        }
        Stmt::WithBlock(w) => {
            for (_, value) in &w.assignments {
                expr(value, source, edits);
            }
            stmts(&w.body, source, edits);
        }
        Stmt::Set(x) => expr(&x.expr, source, edits),
        Stmt::SetBlock(x) => {
            if let Some(f) = &x.filter {
                expr(f, source, edits);
            }
            stmts(&x.body, source, edits);
        }
        Stmt::AutoEscape(x) => stmts(&x.body, source, edits),
        Stmt::FilterBlock(x) => {
            expr(&x.filter, source, edits);
            stmts(&x.body, source, edits);
        }
        Stmt::Block(x) => stmts(&x.body, source, edits),
        Stmt::Import(_) | Stmt::FromImport(_) | Stmt::Extends(_) | Stmt::Include(_) => {}
        Stmt::Macro(m) => {
            for d in &m.defaults {
                expr(d, source, edits);
            }
            stmts(&m.body, source, edits);
        }
        Stmt::CallBlock(c) => {
            call(&c.call, source, edits);
            for d in &c.macro_decl.defaults {
                expr(d, source, edits);
            }
            stmts(&c.macro_decl.body, source, edits);
        }
        Stmt::Do(d) => call(&d.call, source, edits),
    }
}

fn call(c: &ast::Call<'_>, source: &str, edits: &mut Vec<Edit>) {
    expr(&c.expr, source, edits);
    args(&c.args, source, edits);
}

fn args(list: &[ast::CallArg<'_>], source: &str, edits: &mut Vec<Edit>) {
    for a in list {
        match a {
            ast::CallArg::Pos(x)
            | ast::CallArg::Kwarg(_, x)
            | ast::CallArg::PosSplat(x)
            | ast::CallArg::KwargSplat(x) => expr(x, source, edits),
        }
    }
}

/// Records the outermost operators to rewrite inside `e` (or `e` itself).
fn expr(e: &ast::Expr<'_>, source: &str, edits: &mut Vec<Edit>) {
    if let ast::Expr::BinOp(b) = e {
        let op = match b.op {
            ast::BinOpKind::Concat => Some("~"),
            ast::BinOpKind::Add => Some("+"),
            ast::BinOpKind::Mul => Some("*"),
            _ => None,
        };
        if let Some(op) = op {
            let (start, end) = extent(e, source);
            let text = format!("{OP}(\"{op}\", {}, {})", text_of(&b.left, source), text_of(&b.right, source));
            edits.push(Edit { start, end, text });
            return;
        }
    }
    for c in children(e) {
        expr(c, source, edits);
    }
}

/// The size of `v` for the bound: a string's bytes, a list's items (a map's entries), or the
/// bytes of its text for anything else.
pub(crate) fn size(v: &Value) -> usize {
    if let Some(s) = v.as_str() {
        return s.len();
    }
    match v.kind() {
        minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Map => v.len().unwrap_or(0),
        _ => 0,
    }
}

/// `Err` when a value of `size` would pass [`MAX_VALUE`].
pub(crate) fn check(size: usize, what: &str) -> Result<(), Error> {
    if size > MAX_VALUE {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "{what} would make a value of {size} bytes or items, more than the {MAX_VALUE} a template may make"
            ),
        ));
    }
    Ok(())
}

/// [`OP`]: `a <op> b` as minijinja computes it, refused when the result would pass
/// [`MAX_VALUE`].
pub(crate) fn op(op: &str, a: Value, b: Value) -> Result<Value, Error> {
    let grows = |n: usize| -> usize {
        match (b.as_i64(), a.as_i64()) {
            (Some(k), _) if k > 0 => n.saturating_mul(k as usize),
            _ => n,
        }
    };
    let bound = match op {
        "~" => {
            let text = |v: &Value| if v.as_str().is_some() { size(v) } else { v.to_string().len() };
            text(&a).saturating_add(text(&b))
        }
        "+" => size(&a).saturating_add(size(&b)),
        "*" => {
            // A string or list repeated: the repeated one's size times the count.
            if size(&a) > 0 {
                grows(size(&a))
            } else {
                match a.as_i64() {
                    Some(k) if k > 0 => size(&b).saturating_mul(k as usize),
                    _ => 0,
                }
            }
        }
        _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("unknown operator {op:?}"))),
    };
    check(bound, &format!("`{op}`"))?;
    // The error without the expression's own line, so that minijinja names the template's.
    eval(op, a, b, Value::UNDEFINED)
}

/// minijinja's own operators and growing filters, compiled once in an environment of their
/// own (the template's would call the bounded versions again).
fn expressions() -> &'static [(&'static str, minijinja::Expression<'static, 'static>)] {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    static EXPRS: OnceLock<Vec<(&'static str, minijinja::Expression<'static, 'static>)>> = OnceLock::new();
    EXPRS.get_or_init(|| {
        let env = ENV.get_or_init(Environment::new);
        [
            ("~", "a ~ b"),
            ("+", "a + b"),
            ("*", "a * b"),
            ("join", "a|join(*b)"),
            ("replace", "a|replace(*b)"),
            ("indent", "a|indent(*b, **c)"),
            ("format", "a|format(*b)"),
        ]
        .into_iter()
        .filter_map(|(op, src)| env.compile_expression(src).ok().map(|e| (op, e)))
        .collect()
    })
}

/// Evaluates the expression named `name` with `a`, `b` and `c`, errors without their own line.
fn eval(name: &str, a: Value, b: Value, c: Value) -> Result<Value, Error> {
    let expr = expressions().iter().find(|(o, _)| *o == name).map(|(_, e)| e);
    let expr = expr.ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("unknown operation {name:?}")))?;
    expr.eval(minijinja::context! { a => a, b => b, c => c })
        .map_err(|e| Error::new(e.kind(), e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string())))
}

/// The text of `v` as minijinja prints it, by length.
fn text_len(v: &Value) -> usize {
    v.as_str().map_or_else(|| v.to_string().len(), str::len)
}

/// The sum of the numbers written in `format` (an upper bound of the widths it asks for).
fn widths(format: &str) -> usize {
    format
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|d| d.parse::<usize>().ok().or((!d.is_empty()).then_some(usize::MAX)))
        .fold(0usize, usize::saturating_add)
}

/// What joining `items` with `sep` makes, in bytes.
fn joined_len(items: &Value, sep: usize) -> Result<usize, Error> {
    let mut n = 0usize;
    let mut total = 0usize;
    for item in items.try_iter()? {
        total = total.saturating_add(text_len(&item));
        n += 1;
    }
    Ok(total.saturating_add(sep.saturating_mul(n.saturating_sub(1))))
}

/// What replacing `from` by `to` in `text` makes, in bytes.
fn replaced_len(text: &str, from: &str, to: usize) -> usize {
    let times = if from.is_empty() { text.chars().count() + 1 } else { text.matches(from).count() };
    text.len().saturating_add(times.saturating_mul(to))
}

/// `join`, bounded.
pub(crate) fn join(value: Value, args: minijinja::value::Rest<Value>) -> Result<Value, Error> {
    let sep = args.first().map_or(0, text_len);
    check(joined_len(&value, sep)?, "`join`")?;
    eval("join", value, Value::from(args.0), Value::UNDEFINED)
}

/// `replace`, bounded.
pub(crate) fn replace(value: Value, args: minijinja::value::Rest<Value>) -> Result<Value, Error> {
    if let (Some(from), Some(to)) = (args.first(), args.get(1)) {
        check(replaced_len(&value.to_string(), &from.to_string(), text_len(to)), "`replace`")?;
    }
    eval("replace", value, Value::from(args.0), Value::UNDEFINED)
}

/// `indent`, bounded.
pub(crate) fn indent(
    value: Value,
    args: minijinja::value::Rest<Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, Error> {
    let mut named = std::collections::BTreeMap::new();
    for key in kwargs.args().map(str::to_string).collect::<Vec<_>>() {
        named.insert(key.clone(), kwargs.get::<Value>(&key)?);
    }
    let width = args.first().or(named.get("width")).map_or(4, text_len_or_number);
    let text = value.to_string();
    check(text.len().saturating_add(width.saturating_mul(text.lines().count() + 1)), "`indent`")?;
    eval("indent", value, Value::from(args.0), Value::from(named))
}

/// A width given as a number or as the text to indent with.
fn text_len_or_number(v: &Value) -> usize {
    v.as_i64().map_or_else(|| text_len(v), |n| usize::try_from(n).unwrap_or(0))
}

/// `format`, bounded.
pub(crate) fn format(value: Value, args: minijinja::value::Rest<Value>) -> Result<Value, Error> {
    let text = value.to_string();
    let bound = args.iter().map(text_len).fold(text.len().saturating_add(widths(&text)), usize::saturating_add);
    check(bound, "`format`")?;
    eval("format", value, Value::from(args.0), Value::UNDEFINED)
}

/// Python's string methods (minijinja-contrib's `pycompat`), with the growing ones bounded.
pub(crate) fn method(state: &minijinja::State, value: &Value, name: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(text) = value.as_str() {
        let bound = match name {
            "replace" => match (args.first(), args.get(1)) {
                (Some(from), Some(to)) => Some(replaced_len(text, &from.to_string(), text_len(to))),
                _ => None,
            },
            "join" => match args.first() {
                Some(items) => Some(joined_len(items, text.len())?),
                None => None,
            },
            "format" => {
                Some(args.iter().map(text_len).fold(text.len().saturating_add(widths(text)), usize::saturating_add))
            }
            _ => None,
        };
        if let Some(bound) = bound {
            check(bound, &format!("`.{name}()`"))?;
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, name, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_become_calls_and_nothing_else_changes() {
        let src = "{{ a ~ b }}{% set x = (a + b) * 2 ~ c|upper %}{{ f(a ~ b, k=c * 3) }}{{ a - b }}{{ 'x' in y }}";
        let out = rewrite(src);
        assert_eq!(
            out,
            "{{ __rocm_llama_op(\"~\", a, b) }}{% set x = __rocm_llama_op(\"~\", __rocm_llama_op(\"*\", \
             __rocm_llama_op(\"+\", a, b), 2), c|upper) %}{{ f(__rocm_llama_op(\"~\", a, b), \
             k=__rocm_llama_op(\"*\", c, 3)) }}{{ a - b }}{{ 'x' in y }}"
        );
        assert_eq!(rewrite("{% if x %}"), "{% if x %}", "unparsable: unchanged");
    }
}
