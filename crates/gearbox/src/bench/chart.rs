//! `gearbox bench --chart FILE`: an SVG of the suite's results, one bar per target in three
//! panels (ingest events/s, batch p99 and produce-to-consume p99), written without a plotting
//! library: the picture is a few dozen rectangles and labels.

use std::fmt::Write as _;

/// One target's bars; `None` draws "skipped" (or "n/a" for a missing latency).
#[derive(Debug, Clone)]
pub struct Bar {
    /// Target name.
    pub target: String,
    /// Events per second.
    pub events_per_s: Option<f64>,
    /// Batch publish p99, ms.
    pub p99_ms: Option<f64>,
    /// Produce-to-consume p99, ms.
    pub e2e_p99_ms: Option<f64>,
}

/// One panel: its title, the value it plots, and the unit printed after each value.
type Panel = (&'static str, fn(&Bar) -> Option<f64>, &'static str);

const ROW: f64 = 26.0;
const LABEL_W: f64 = 190.0;
const PANEL_W: f64 = 290.0;
const GAP: f64 = 30.0;
const TOP: f64 = 64.0;

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document; `title` goes on top, `note` under the panels.
#[must_use]
pub fn svg(title: &str, note: &str, bars: &[Bar]) -> String {
    let panels: [Panel; 3] = [
        (
            "ingest, events/s (higher is better)",
            |b| b.events_per_s,
            "",
        ),
        (
            "batch publish p99, ms (lower is better)",
            |b| b.p99_ms,
            " ms",
        ),
        (
            "produce-to-consume p99, ms (lower is better)",
            |b| b.e2e_p99_ms,
            " ms",
        ),
    ];
    let width = LABEL_W + 3.0 * (PANEL_W + GAP) + 20.0;
    let height = TOP + ROW * bars.len() as f64 + 50.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
"##,
        esc(title)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let _ = writeln!(
            out,
            r##"<text x="10" y="{:.1}">{}</text>"##,
            y + 16.0,
            esc(&b.target)
        );
    }
    for (k, (label, value, unit)) in panels.iter().enumerate() {
        let x0 = LABEL_W + k as f64 * (PANEL_W + GAP);
        let _ = writeln!(
            out,
            r##"<text x="{x0:.1}" y="{:.1}" font-weight="bold">{}</text>"##,
            TOP - 12.0,
            esc(label)
        );
        let max = bars
            .iter()
            .filter_map(value)
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
        for (i, b) in bars.iter().enumerate() {
            let y = TOP + ROW * i as f64;
            match value(b).filter(|v| v.is_finite()) {
                Some(v) => {
                    let w = if max > 0.0 {
                        v / max * (PANEL_W - 70.0)
                    } else {
                        0.0
                    };
                    let fill = if b.target.starts_with("gearbox") {
                        "#2f6fb3"
                    } else {
                        "#9aa5b1"
                    };
                    let text = if unit.is_empty() {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}{unit}")
                    };
                    let _ = writeln!(
                        out,
                        r##"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="18" fill="{fill}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                        y + 3.0,
                        x0 + w + 4.0,
                        y + 16.0,
                        esc(&text)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{x0:.1}" y="{:.1}" fill="#888888">{}</text>"##,
                        y + 16.0,
                        if b.events_per_s.is_none() {
                            "skipped"
                        } else {
                            "n/a"
                        }
                    );
                }
            }
        }
    }
    let _ = write!(
        out,
        r##"<text x="10" y="{:.1}" fill="#555555">{}</text>
</svg>
"##,
        height - 16.0,
        esc(note)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_scales_bars_and_escapes_labels() {
        let bars = vec![
            Bar {
                target: "gearbox-http".into(),
                events_per_s: Some(200_000.0),
                p99_ms: Some(20.0),
                e2e_p99_ms: Some(5.0),
            },
            Bar {
                target: "<peer>".into(),
                events_per_s: Some(100_000.0),
                p99_ms: Some(10.0),
                e2e_p99_ms: None,
            },
            Bar {
                target: "gone".into(),
                events_per_s: None,
                p99_ms: None,
                e2e_p99_ms: None,
            },
        ];
        let s = svg("t & u", "note", &bars);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("&lt;peer&gt;") && s.contains("t &amp; u"));
        // The largest value spans the panel's bar width; half of it, half the width.
        assert!(s.contains(r#"width="220.0" height="18""#), "{s}");
        assert!(s.contains(r#"width="110.0" height="18""#), "{s}");
        assert!(s.contains(">skipped<") && s.contains(">n/a<"));
    }
}
