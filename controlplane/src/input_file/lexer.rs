//! The lexical pass of [`super::precheck`]: one walk over the bytes, line by line, that knows
//! just enough YAML to tell where a node may start (and so where `&`/`*` would be an anchor or
//! an alias rather than text), which lines belong to quoted, block or multi-line plain scalars
//! (whose text is not YAML and is not looked into), how deep the nesting is, and how many
//! documents there are.
//!
//! Where it cannot be exact it errs towards looking at more text, never less: a line it wrongly
//! takes for structure can at worst be refused for an anchor it does not hold (a false alarm on
//! a strange file), while a line it wrongly skipped could hide an alias from us. The block
//! scalar and plain scalar rules below follow libyaml's (serde_yaml's parser) for that reason.
//! All the indicators it looks for are ASCII, which never occurs inside a multi-byte UTF-8
//! character, so walking bytes is safe.

use super::{Limits, Problem};

pub fn check(text: &str, limits: &Limits) -> Result<(), Problem> {
    let mut lexer = Lexer::new(limits);
    // The piece after the final newline is empty, so it changes nothing.
    for (i, line) in text.split('\n').enumerate() {
        lexer.line(i + 1, line.strip_suffix('\r').unwrap_or(line))?;
    }
    if lexer.content_documents == 0 {
        return Err(Problem::NoDocuments { how_to_empty: limits.how_to_empty });
    }
    Ok(())
}

/// Where a line's walk begins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Where a node may start.
    Node,
    /// Inside a plain scalar that goes on from the line before.
    Plain,
    /// Inside a quoted scalar, or after a node.
    Inside,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// A block scalar (`|` or `>`) whose lines are being skipped.
struct Block {
    /// The indentation of the collection holding it (-1 at the top): content is deeper.
    parent: isize,
    /// The content's indentation, once its first non-blank line has shown it.
    indent: Option<usize>,
}

struct Lexer<'l> {
    limits: &'l Limits,
    /// Documents begun (by `---`, or by content outside any document).
    documents: usize,
    /// Documents with any content.
    content_documents: usize,
    /// Inside a document (begun and not ended by `...`).
    open: bool,
    /// The open document has content.
    has_content: bool,
    /// Block collections as (column, is a sequence), innermost last.
    indents: Vec<(usize, bool)>,
    /// Open `[`/`{`.
    flow: usize,
    /// Inside a flow collection that continues onto the next line: whether a node may start
    /// where the line begins.
    flow_expect: bool,
    quote: Option<Quote>,
    block: Option<Block>,
    /// The line before ended inside a plain scalar held by a collection at this indentation:
    /// deeper lines continue it.
    plain: Option<isize>,
    /// Length of the quoted, block or plain scalar running over several lines.
    scalar_len: usize,
}

fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

/// `---` or `...` at column 0, alone or followed by a blank.
fn marker(line: &str, which: &str) -> bool {
    line.starts_with(which) && line.as_bytes().get(3).is_none_or(|b| blank(*b))
}

impl<'l> Lexer<'l> {
    fn new(limits: &'l Limits) -> Self {
        Self {
            limits,
            documents: 0,
            content_documents: 0,
            open: false,
            has_content: false,
            indents: Vec::new(),
            flow: 0,
            flow_expect: false,
            quote: None,
            block: None,
            plain: None,
            scalar_len: 0,
        }
    }

    fn line(&mut self, no: usize, line: &str) -> Result<(), Problem> {
        if line.len() > self.limits.max_scalar_bytes {
            return Err(Problem::TooLong { line: no, max: self.limits.max_scalar_bytes });
        }
        // Document markers end whatever was open, even a scalar (YAML says so).
        if marker(line, "---") || marker(line, "...") {
            self.indents.clear();
            (self.flow, self.quote, self.block, self.plain) = (0, None, None, None);
            if line.starts_with("...") {
                self.open = false;
                return Ok(());
            }
            self.documents += 1;
            if self.documents > self.limits.max_documents {
                return Err(Problem::TooManyDocuments { max: self.limits.max_documents });
            }
            (self.open, self.has_content) = (true, false);
            return self.scan(no, line, 3, Start::Node, -1, false);
        }
        let indent = line.bytes().take_while(|b| *b == b' ').count();
        let rest = line[indent..].trim_start_matches([' ', '\t']);
        if self.quote.is_some() {
            return self.scan(no, line, 0, Start::Inside, -1, false);
        }
        if let Some(block) = &mut self.block {
            let content = rest.is_empty()
                || match block.indent {
                    Some(m) => indent >= m,
                    None if indent as isize > block.parent => {
                        block.indent = Some(indent);
                        true
                    }
                    None => false,
                };
            if content {
                return self.grow_scalar(no, line.len() + 1);
            }
            self.block = None;
        }
        if rest.is_empty() {
            if self.plain.is_some() {
                self.grow_scalar(no, 1)?;
            }
            return Ok(());
        }
        if rest.starts_with('#') {
            // A comment line ends a plain scalar; in a flow collection a node may follow it.
            self.plain = None;
            self.flow_expect |= self.flow > 0;
            return Ok(());
        }
        if self.flow > 0 {
            // Indentation means nothing inside a flow collection.
            let start = if self.flow_expect { Start::Node } else { Start::Inside };
            return self.scan(no, line, indent, start, indent as isize, false);
        }
        if let Some(parent) = self.plain {
            if indent as isize > parent {
                return self.scan(no, line, indent, Start::Plain, parent, false);
            }
            self.plain = None;
        }
        if line.starts_with('%') {
            // A directive (`%YAML 1.2`), before a document's `---`.
            return Ok(());
        }
        self.scan(no, line, indent, Start::Node, indent as isize, true)
    }

    /// Walks `line` from `from`, which is at `start`. `n`: the indentation of the collection
    /// the line's nodes belong to. `structure`: a block-context line whose first token opens
    /// or continues a collection at its indentation.
    fn scan(
        &mut self,
        no: usize,
        line: &str,
        from: usize,
        start: Start,
        mut n: isize,
        structure: bool,
    ) -> Result<(), Problem> {
        let b = line.as_bytes();
        let mut i = from;
        // A node may start here (so `&`/`*` would be an anchor or an alias).
        let mut expect = start == Start::Node;
        // The line so far ends inside a plain scalar.
        let mut in_plain = start == Start::Plain;
        // Where the last scalar began (a key's column, once a `:` follows it).
        let mut token = from;
        // Just after a quoted scalar or a closed flow collection (JSON-like: `"a":b` is a pair).
        let mut json = false;
        let mut first = structure;
        while i < b.len() {
            if let Some(quote) = self.quote {
                let began = i;
                while i < b.len() {
                    match (quote, b[i]) {
                        (Quote::Double, b'\\') => i += 2,
                        (Quote::Double, b'"') => break,
                        (Quote::Single, b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        (Quote::Single, b'\'') => break,
                        _ => i += 1,
                    }
                }
                self.grow_scalar(no, i.min(b.len()) - began)?;
                if i >= b.len() {
                    // The quoted scalar goes on over the next line.
                    self.content()?;
                    return self.grow_scalar(no, 1);
                }
                (self.quote, expect, json) = (None, false, true);
                i += 1;
                continue;
            }
            let c = b[i];
            if blank(c) {
                i += 1;
                continue;
            }
            if c == b'#' && (i == 0 || blank(b[i - 1])) {
                // A comment: ends a plain scalar; in a flow collection a node may follow it.
                in_plain = false;
                expect |= self.flow > 0;
                break;
            }
            self.content()?;
            let next_blank = b.get(i + 1).is_none_or(|x| blank(*x));
            if first {
                first = false;
                self.enter(no, i, c == b'-' && next_blank)?;
            }
            if expect {
                match c {
                    b'&' | b'*' => {
                        let end = b[i..]
                            .iter()
                            .position(|x| blank(*x) || flow_indicator(*x))
                            .map_or(b.len(), |p| i + p);
                        return Err(Problem::AnchorOrAlias {
                            line: no,
                            column: i + 1,
                            what: if c == b'&' { "anchor" } else { "alias" },
                            text: String::from_utf8_lossy(&b[i..end.max(i + 1)]).into_owned(),
                        });
                    }
                    b'!' => {
                        // A tag: the node follows it.
                        while i < b.len() && !blank(b[i]) && !(self.flow > 0 && flow_indicator(b[i])) {
                            i += 1;
                        }
                        continue;
                    }
                    b'"' | b'\'' => {
                        self.quote = Some(if c == b'"' { Quote::Double } else { Quote::Single });
                        self.scalar_len = 0;
                        (token, in_plain) = (i, false);
                        i += 1;
                        continue;
                    }
                    b'[' | b'{' => {
                        self.flow += 1;
                        self.check_depth(no)?;
                        i += 1;
                        continue;
                    }
                    b'|' | b'>' if self.flow == 0 => {
                        // A block scalar: the rest of the line is its header (and a comment);
                        // the lines deeper than the collection holding it are its text.
                        self.block = Some(Block { parent: n, indent: None });
                        self.scalar_len = 0;
                        self.plain = None;
                        return Ok(());
                    }
                    b'-' if self.flow == 0 && next_blank => {
                        n = i as isize;
                        if i != from || !structure {
                            self.enter(no, i, true)?;
                        }
                        i += 1;
                        continue;
                    }
                    b'?' | b':'
                        if next_blank
                            || (self.flow > 0 && b.get(i + 1).is_some_and(|x| flow_indicator(*x))) =>
                    {
                        if c == b'?' && self.flow == 0 {
                            n = i as isize;
                        }
                        i += 1;
                        continue;
                    }
                    _ => {
                        // A plain scalar begins.
                        (expect, token, in_plain) = (false, i, true);
                        self.scalar_len = 0;
                    }
                }
            }
            match c {
                b',' | b']' | b'}' if self.flow > 0 => {
                    if c != b',' {
                        self.flow -= 1;
                    }
                    (expect, json, in_plain) = (c == b',', c != b',', false);
                    i += 1;
                }
                b'[' | b'{' if self.flow > 0 => {
                    // Not valid inside a plain scalar; counted anyway.
                    self.flow += 1;
                    self.check_depth(no)?;
                    (expect, in_plain) = (true, false);
                    i += 1;
                }
                b':' if next_blank
                    || (self.flow > 0 && (json || b.get(i + 1).is_some_and(|x| flow_indicator(*x)))) =>
                {
                    // A value indicator: what came before was a key.
                    if self.flow == 0 {
                        n = token as isize;
                        if token > from {
                            self.enter(no, token, false)?;
                        }
                    }
                    (expect, json, in_plain) = (true, false, false);
                    i += 1;
                }
                _ => {
                    json = false;
                    i += 1;
                }
            }
        }
        if self.flow > 0 {
            self.flow_expect = expect;
        } else if in_plain {
            self.plain = Some(n);
        } else {
            self.plain = None;
        }
        if in_plain {
            // Its text on this line, and the line break folded into it.
            self.grow_scalar(no, b.len().saturating_sub(token) + 1)?;
        }
        Ok(())
    }

    /// The current document has content.
    fn content(&mut self) -> Result<(), Problem> {
        if !self.open {
            self.documents += 1;
            if self.documents > self.limits.max_documents {
                return Err(Problem::TooManyDocuments { max: self.limits.max_documents });
            }
            (self.open, self.has_content) = (true, false);
        }
        if !self.has_content {
            self.has_content = true;
            self.content_documents += 1;
        }
        Ok(())
    }

    /// A block node at `column`: closes the collections it is outside of, opens one if it
    /// starts a deeper one (a sequence at a mapping's own column is one level deeper too).
    fn enter(&mut self, no: usize, column: usize, sequence: bool) -> Result<(), Problem> {
        while self.indents.last().is_some_and(|(c, _)| *c > column) {
            self.indents.pop();
        }
        match self.indents.last().copied() {
            Some((c, s)) if c == column && s == sequence => {}
            Some((c, true)) if c == column => {
                // A key where a sequence held by that key's mapping was: the sequence ended.
                self.indents.pop();
                if self.indents.last() != Some(&(column, false)) {
                    self.indents.push((column, false));
                }
            }
            _ => self.indents.push((column, sequence)),
        }
        self.check_depth(no)
    }

    fn check_depth(&self, no: usize) -> Result<(), Problem> {
        if self.indents.len() + self.flow > self.limits.max_depth {
            return Err(Problem::TooDeep { line: no, max: self.limits.max_depth });
        }
        Ok(())
    }

    fn grow_scalar(&mut self, no: usize, by: usize) -> Result<(), Problem> {
        self.scalar_len = self.scalar_len.saturating_add(by);
        if self.scalar_len > self.limits.max_scalar_bytes {
            return Err(Problem::TooLong { line: no, max: self.limits.max_scalar_bytes });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
