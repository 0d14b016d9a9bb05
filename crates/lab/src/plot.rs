//! Small hand-written SVG charts for the run report (line charts with axes, grouped
//! bar charts, a side-by-side text panel). A plotting crate would pull in font and
//! raster stacks for three static charts; plain SVG text is ~200 lines and opens in
//! any browser or Markdown viewer.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0).max(1e-12) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0).max(1e-12) * (H - TOP - BOTTOM)
    }
}

fn header(svg: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        (W - RIGHT + LEFT) / 2.0,
        esc(title),
        (W - RIGHT + LEFT) / 2.0,
        H - 12.0,
        esc(x_label),
        (H - BOTTOM + TOP) / 2.0,
        esc(y_label)
    );
}

fn axes(svg: &mut String, f: &Frame, xticks: &[(f64, String)]) {
    for t in ticks(f.y0, f.y1, 6) {
        let y = f.py(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    for (x, label) in xticks {
        let px = f.px(*x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="black"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0,
            esc(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<polyline points="{LEFT},{TOP} {LEFT},{:.1} {:.1},{:.1}" fill="none" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
}

fn legend(svg: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 18.0;
        let x = W - RIGHT + 12.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 4.0,
            COLORS[i % COLORS.len()],
            x + 20.0,
            y + 2.0,
            esc(name)
        );
    }
}

/// A line chart; `hlines` are dashed reference lines `(y, label)`. NaN points are skipped.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    hlines: &[(f64, String)],
) -> String {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for (y, _) in hlines {
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let yt = ticks(y0 - pad, y1 + pad, 6);
    let f = Frame {
        x0: if x1 > x0 { x0 } else { x0 - 1.0 },
        x1: if x1 > x0 { x1 } else { x1 + 1.0 },
        y0: yt.first().copied().unwrap_or(y0).min(y0 - pad),
        y1: yt.last().copied().unwrap_or(y1).max(y1 + pad),
    };
    let mut svg = String::new();
    header(&mut svg, title, x_label, y_label);
    let xt: Vec<(f64, String)> = ticks(f.x0, f.x1, 12)
        .into_iter()
        .map(|t| (t, fmt_tick(t)))
        .collect();
    axes(&mut svg, &f, &xt);
    for (y, label) in hlines {
        let py = f.py(*y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#555" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" fill="#555" text-anchor="end">{}</text>"##,
            W - RIGHT,
            W - RIGHT - 4.0,
            py - 4.0,
            esc(label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", f.px(x), f.py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in &path {
            let (x, y) = p.split_once(',').expect("formatted as x,y");
            let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{c}"/>"#);
        }
    }
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}

/// Grouped bars: one group per label, one bar per series; values in `[0, y_max]`.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    y_max: f64,
) -> String {
    let f = Frame {
        x0: 0.0,
        x1: groups.len().max(1) as f64,
        y0: 0.0,
        y1: y_max,
    };
    let mut svg = String::new();
    header(&mut svg, title, "", y_label);
    let xt: Vec<(f64, String)> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (i as f64 + 0.5, g.clone()))
        .collect();
    axes(&mut svg, &f, &xt);
    let group_w = f.px(1.0) - f.px(0.0);
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (si, (_, values)) in series.iter().enumerate() {
        for (gi, v) in values.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let x = f.px(gi as f64) + group_w * 0.1 + si as f64 * bar_w;
            let y = f.py(v.min(y_max));
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                bar_w - 2.0,
                (H - BOTTOM - y).max(0.0),
                COLORS[si % COLORS.len()],
                x + bar_w / 2.0 - 1.0,
                y - 3.0,
                fmt_tick((v * 100.0).round() / 100.0)
            );
        }
    }
    let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}

fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if cur.chars().count() + word.chars().count() + 1 > width && !cur.is_empty() {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(l) = lines.last_mut() {
            l.push_str(" …");
        }
    }
    lines
}

/// Rows of texts side by side: `headers` name the columns, each row is one prompt.
pub fn text_panel(title: &str, headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = headers.len().max(1);
    let col_w = 1100.0 / cols as f64;
    let chars = (col_w / 6.6) as usize;
    let line_h = 14.0;
    let mut y = 60.0;
    let mut body = String::new();
    for row in rows {
        let wrapped: Vec<Vec<String>> = row.iter().map(|t| wrap(t, chars, 8)).collect();
        let n = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for (ci, lines) in wrapped.iter().enumerate() {
            for (li, l) in lines.iter().enumerate() {
                let _ = writeln!(
                    body,
                    r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                    10.0 + ci as f64 * col_w,
                    y + li as f64 * line_h,
                    esc(l)
                );
            }
        }
        y += n as f64 * line_h + 8.0;
        let _ = writeln!(
            body,
            r##"<line x1="5" y1="{:.1}" x2="1115" y2="{:.1}" stroke="#ccc"/>"##,
            y - 12.0,
            y - 12.0
        );
        y += 6.0;
    }
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1120" height="{:.0}" viewBox="0 0 1120 {:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
"#,
        y + 10.0,
        y + 10.0,
        esc(title)
    );
    for (ci, h) in headers.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="44" font-weight="bold">{}</text>"#,
            10.0 + ci as f64 * col_w,
            esc(h)
        );
    }
    svg.push_str(&body);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(-4.3, 2.1, 6);
        assert!(t.first().unwrap() >= &-4.3 && t.last().unwrap() <= &2.1 && t.len() >= 4);
    }

    #[test]
    fn charts_are_wellformed_svg_with_labels() {
        let s = vec![
            Series {
                name: "pos -1".into(),
                points: vec![(0.0, 1.0), (1.0, -2.0), (2.0, f64::NAN), (3.0, 0.5)],
            },
            Series {
                name: "pos <&>".into(),
                points: vec![(0.0, 0.0), (3.0, 1.0)],
            },
        ];
        let svg = line_chart(
            "Bypass",
            "layer",
            "refusal score",
            &s,
            &[(0.0, "baseline".into())],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("pos &lt;&amp;&gt;") && svg.contains("baseline"));
        assert_eq!(svg.matches("<polyline").count(), 3); // axes + 2 series
        assert_eq!(svg.matches("<circle").count(), 5); // NaN skipped
        let b = bar_chart(
            "Refusal rate",
            "rate",
            &["baseline".into(), "ablation".into()],
            &[
                ("harmful".into(), vec![0.5, 0.0]),
                ("harmless".into(), vec![0.1, f64::NAN]),
            ],
            1.0,
        );
        assert_eq!(b.matches("<rect").count(), 1 + 3 + 2); // background + bars + legend
        let p = text_panel(
            "Examples",
            &["a".into(), "b".into()],
            &[vec!["x <y>".into(), "z".into()]],
        );
        assert!(p.contains("x &lt;y&gt;"));
    }
}
