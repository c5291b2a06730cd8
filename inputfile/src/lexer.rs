//! The lexical pass of [`super::precheck`]: one walk over the text, line by line, that knows
//! just enough YAML to tell where a token may start (and so where `&`/`*` would be an anchor
//! or an alias rather than text), which lines belong to quoted, block or multi-line plain
//! scalars (whose text is not YAML and is not looked into), how deep the nesting is, and how
//! many documents there are.
//!
//! It follows libyaml's scanner (serde_yaml's parser) rule for rule where that decides what is
//! text: libyaml's stack of block indentations (a plain scalar goes on over lines deeper than
//! the innermost block collection; a block scalar's text is deeper still), its line breaks
//! (`\r`, NEL, LS and PS as well as `\n`), and its token starts (a comment may follow any token
//! directly; in a flow collection `:` and `?` always are indicators). A line taken for text by
//! mistake could hide an alias; a line taken for structure by mistake can at worst be refused
//! for an anchor it does not hold. A differential test against serde_yaml holds it to that
//! (`lexer/tests.rs`). All indicators are ASCII, which never occurs inside a multi-byte UTF-8
//! character, so walking bytes is safe.

use super::{Limits, Problem, lines::lines};

pub fn check(text: &str, limits: &Limits) -> Result<(), Problem> {
    let mut lexer = Lexer::new(limits);
    for (i, line) in lines(text).enumerate() {
        lexer.line(i + 1, line)?;
    }
    if lexer.content_documents == 0 {
        return Err(Problem::NoDocuments { how_to_empty: limits.how_to_empty });
    }
    Ok(())
}

/// Where a line's walk begins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Where a token may start.
    Token,
    /// Inside a plain scalar that goes on from the line before.
    Plain,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// A block scalar (`|` or `>`) whose lines are being skipped.
struct Block {
    /// Its text is indented at least this much (libyaml: one more than the collection
    /// holding it, and at least 1).
    min: usize,
    /// The text's indentation, once known (an indentation indicator, or the first line).
    indent: Option<usize>,
    /// The most spaces on the blank lines before the first line of text (libyaml counts them).
    blank: usize,
}

/// A block collection (libyaml's indentation stack).
struct Level {
    column: usize,
    sequence: bool,
    /// A sequence at its key's own column (`key:\n- a`) is open in it: one level more.
    indentless: bool,
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
    levels: Vec<Level>,
    /// Open `[`/`{`.
    flow: usize,
    /// Inside a flow collection that goes on over the next line: what that line begins in.
    flow_start: Start,
    quote: Option<Quote>,
    block: Option<Block>,
    /// The line before ended inside a plain scalar (block context): deeper lines go on with it.
    plain: bool,
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
            levels: Vec::new(),
            flow: 0,
            flow_start: Start::Token,
            quote: None,
            block: None,
            plain: false,
            scalar_len: 0,
        }
    }

    /// The column of the innermost block collection; -1 at the top.
    fn indent(&self) -> isize {
        self.levels.last().map_or(-1, |l| l.column as isize)
    }

    fn line(&mut self, no: usize, line: &str) -> Result<(), Problem> {
        if line.len() > self.limits.max_scalar_bytes {
            return Err(Problem::TooLong { line: no, max: self.limits.max_scalar_bytes });
        }
        // libyaml skips a byte order mark at the start of any line, counting it as a column:
        // rather than follow that, refuse it ([`super::read`] drops the file's own).
        if line.starts_with('\u{feff}') {
            return Err(Problem::ByteOrderMark { line: no });
        }
        // Document markers end whatever was open, even a scalar (YAML says so).
        if marker(line, "---") || marker(line, "...") {
            self.levels.clear();
            (self.flow, self.quote, self.block, self.plain) = (0, None, None, false);
            if line.starts_with("...") {
                self.open = false;
                return Ok(());
            }
            self.documents += 1;
            if self.documents > self.limits.max_documents {
                return Err(Problem::TooManyDocuments { max: self.limits.max_documents });
            }
            (self.open, self.has_content) = (true, false);
            return self.scan(no, line, 3, Start::Token);
        }
        if self.quote.is_some() {
            return self.scan(no, line, 0, Start::Token);
        }
        let indent = line.bytes().take_while(|b| *b == b' ').count();
        let first = indent + line[indent..].bytes().take_while(|b| blank(*b)).count();
        let empty = first == line.len();
        if let Some(block) = &mut self.block {
            let text = match block.indent {
                _ if empty => {
                    block.blank = block.blank.max(indent);
                    true
                }
                Some(m) => indent >= m,
                None if indent >= block.min.max(block.blank) => {
                    block.indent = Some(indent);
                    true
                }
                None => false,
            };
            if text {
                return self.grow_scalar(no, line.len() + 1);
            }
            self.block = None;
        }
        if empty {
            return if self.plain { self.grow_scalar(no, 1) } else { Ok(()) };
        }
        if line.as_bytes()[first] == b'#' {
            // A comment line ends a plain scalar; in a flow collection a token may follow it.
            self.plain = false;
            self.flow_start = Start::Token;
            return Ok(());
        }
        if self.flow > 0 {
            // Indentation means nothing inside a flow collection.
            return self.scan(no, line, first, self.flow_start);
        }
        if self.plain {
            if first as isize > self.indent() {
                return self.scan(no, line, first, Start::Plain);
            }
            self.plain = false;
        }
        if line.starts_with('%') {
            // A directive (`%YAML 1.2`), before a document's `---`.
            return Ok(());
        }
        // A new line of block structure: the collections it is not inside of are closed.
        while self.levels.last().is_some_and(|l| l.column > first) {
            self.levels.pop();
        }
        let dash = line.as_bytes()[first] == b'-' && line.as_bytes().get(first + 1).is_none_or(|b| blank(*b));
        if let Some(top) = self.levels.last_mut()
            && top.column == first
            && !dash
        {
            top.indentless = false;
        }
        self.scan(no, line, first, Start::Token)
    }

    /// Walks `line` from `from`, which is at `start`. Outside scalars every non-blank byte
    /// starts a token, as in libyaml's scanner: an alias there is an alias token, whatever the
    /// parser would make of it, so it is refused.
    fn scan(&mut self, no: usize, line: &str, from: usize, start: Start) -> Result<(), Problem> {
        let b = line.as_bytes();
        let mut i = from;
        let mut in_plain = start == Start::Plain;
        // Where the current node began (a key's column, once a `:` follows it).
        let mut node: Option<usize> = None;
        loop {
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
                self.quote = None;
                i += 1;
                continue;
            }
            if in_plain {
                // A plain scalar ends at " #", at ": " (or ':' at the end), and in a flow
                // collection at ",[]{}" and at ':' before one of those or '?'.
                let began = i;
                while i < b.len() {
                    let (c, next) = (b[i], b.get(i + 1).copied());
                    let ends = match c {
                        b' ' | b'\t' => next == Some(b'#'),
                        b':' => {
                            next.is_none_or(blank)
                                || (self.flow > 0 && next.is_some_and(|x| flow_indicator(x) || x == b'?'))
                        }
                        _ => self.flow > 0 && flow_indicator(c),
                    };
                    if ends {
                        break;
                    }
                    i += 1;
                }
                self.grow_scalar(no, i - began)?;
                if i >= b.len() {
                    break;
                }
                in_plain = false;
            }
            while i < b.len() && blank(b[i]) {
                i += 1;
            }
            let Some(&c) = b.get(i) else { break };
            if c == b'#' {
                break;
            }
            self.content()?;
            let next_blank = b.get(i + 1).is_none_or(|x| blank(*x));
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
                    // A tag (libyaml's characters for one); the node goes on after it.
                    node.get_or_insert(i);
                    i += 1;
                    if b.get(i) == Some(&b'<') {
                        i = b[i..].iter().position(|x| *x == b'>').map_or(b.len(), |p| i + p + 1);
                    } else {
                        while i < b.len()
                            && (b[i].is_ascii_alphanumeric() || b"_-;/?:@&=+$.%!~*'()".contains(&b[i]))
                        {
                            i += 1;
                        }
                    }
                }
                b'"' | b'\'' => {
                    node.get_or_insert(i);
                    self.quote = Some(if c == b'"' { Quote::Double } else { Quote::Single });
                    self.scalar_len = 0;
                    i += 1;
                }
                b'[' | b'{' => {
                    if self.flow == 0 {
                        node.get_or_insert(i);
                    }
                    self.flow += 1;
                    self.check_depth(no)?;
                    i += 1;
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    i += 1;
                }
                b',' => {
                    node = None;
                    i += 1;
                }
                b'-' if next_blank => {
                    if self.flow == 0 {
                        self.roll(no, i, true)?;
                    }
                    (node, i) = (None, i + 1);
                }
                // In a flow collection these always are indicators.
                b'?' | b':' if next_blank || self.flow > 0 => {
                    if self.flow == 0 {
                        // A `:` ends a key: a mapping at the key's column (a key empty but for
                        // a tag starts at the tag).
                        let at = if c == b':' { node.unwrap_or(i) } else { i };
                        self.roll(no, at, false)?;
                    }
                    (node, i) = (None, i + 1);
                }
                b'|' | b'>' if self.flow == 0 => {
                    // A block scalar: the rest of the line is its header (and a comment);
                    // its text is the lines deeper than the collection holding it.
                    let n = self.indent();
                    let digit = b[i + 1..].iter().take(2).find(|d| d.is_ascii_digit());
                    let indent = digit.map(|d| {
                        let d = usize::from(d - b'0');
                        if n >= 0 { n as usize + d } else { d }
                    });
                    self.block = Some(Block { min: (n + 1).max(1) as usize, indent, blank: 0 });
                    self.scalar_len = 0;
                    self.plain = false;
                    return Ok(());
                }
                _ => {
                    // A plain scalar begins.
                    node.get_or_insert(i);
                    self.scalar_len = 0;
                    in_plain = true;
                    i += 1;
                }
            }
        }
        if self.flow > 0 {
            self.flow_start = if in_plain { Start::Plain } else { Start::Token };
        } else {
            self.plain = in_plain;
        }
        if in_plain {
            // The line break folded into it.
            self.grow_scalar(no, 1)?;
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

    /// A block collection's entry or key at `column` (libyaml's `roll_indent`): deeper than
    /// the innermost collection, it opens one; a sequence at a mapping's own column is an
    /// indentless sequence, one level more for the depth.
    fn roll(&mut self, no: usize, column: usize, sequence: bool) -> Result<(), Problem> {
        match self.levels.last_mut() {
            Some(top) if top.column > column => {}
            Some(top) if top.column == column => {
                if sequence && !top.sequence {
                    top.indentless = true;
                }
            }
            _ => self.levels.push(Level { column, sequence, indentless: false }),
        }
        self.check_depth(no)
    }

    fn check_depth(&self, no: usize) -> Result<(), Problem> {
        let indentless = self.levels.iter().filter(|l| l.indentless).count();
        if self.levels.len() + indentless + self.flow > self.limits.max_depth {
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
