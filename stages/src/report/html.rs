//! A small HTML writer: escaped text, and tables. The document is also well-formed XML (tags
//! closed, attributes quoted), so that the SVG figures it embeds and the page parse as one tree.

/// `text` with `& < > " '` escaped, safe inside elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One cell: `<th>` or `<td>`, right-aligned when `numeric`.
fn cell(tag: &str, html: &str, numeric: bool) -> String {
    let class = if numeric { " class=\"num\"" } else { "" };
    format!("<{tag}{class}>{html}</{tag}>")
}

/// A table: a header row and body rows of already-escaped cell HTML; `numeric` columns are
/// right-aligned.
pub fn table(header: &[String], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let num = |i: usize| numeric.get(i).copied().unwrap_or(false);
    let mut out = String::from("<table>\n<thead><tr>");
    for (i, h) in header.iter().enumerate() {
        out.push_str(&cell("th", h, num(i)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            out.push_str(&cell("td", c, num(i)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// An SVG figure as it goes inline: anything before `<svg` (an XML declaration) is dropped.
pub fn inline_svg(svg: &str) -> Option<&str> {
    svg.find("<svg").map(|i| svg[i..].trim_end())
}

/// The page's style sheet.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
h1{margin-bottom:0.2em}h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:2em}\
table{border-collapse:collapse;margin:0.5em 0 1em}th,td{border:1px solid #ddd;padding:0.25em 0.6em}\
th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}svg{max-width:100%;height:auto}\
pre{background:#f8f8f8;padding:0.6em;overflow-x:auto;font-size:0.85em}.best{font-weight:bold}\
code{font-size:0.9em}nav a{margin-right:1em}.muted{color:#666}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_builds_tables() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
        let t = table(
            &["model".into(), "r2".into()],
            &[vec!["bow5".into(), "0.5".into()]],
            &[false, true],
        );
        assert!(
            t.contains("<th class=\"num\">r2</th>") && t.contains("<td class=\"num\">0.5</td>")
        );
        assert_eq!(
            inline_svg("<?xml version=\"1.0\"?>\n<svg a=\"1\"></svg>\n"),
            Some("<svg a=\"1\"></svg>")
        );
        assert_eq!(inline_svg("not a figure"), None);
    }
}
