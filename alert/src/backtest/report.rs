//! The alarm-burden report (`rules backtest --report FILE.html`): one self-contained HTML page
//! (inline CSS and SVG, no script, no external asset) with alerts per patient-day per rule, the
//! patients who produce most alerts, the time of day, and the parameter sweep. Every number on
//! it carries a `data-metric` attribute naming what it is, so a test can compare the page with
//! SQL over the same backtest's alerts (`--format csv`). Also the alerts as CSV.

use std::fmt::Write as _;

use super::{Report, Sweep};

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One CSV field (quoted when it needs to be).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The alerts as CSV: `rule,patient_id,start,end,minutes,value,resolved,message`.
pub fn csv(report: &Report) -> String {
    let mut out = String::from("rule,patient_id,start,end,minutes,value,resolved,message\n");
    for f in &report.alerts {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            field(&f.rule),
            field(&f.patient_id),
            f.start,
            f.end,
            f.minutes,
            f.value.map(|v| v.to_string()).unwrap_or_default(),
            f.resolved,
            field(&f.message)
        );
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1rem 1.5rem;color:#1b1f24;background:#fff}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:.25rem .6rem;border-bottom:1px solid #e3e6ea;text-align:right}
th:first-child,td:first-child{text-align:left}code{background:#f3f4f6;padding:.1rem .3rem;border-radius:3px}
svg{display:block;margin:.5rem 0;max-width:100%}svg text{font:12px system-ui,sans-serif;fill:#1b1f24}
.bar{fill:#2f6db5}.ref{fill:#b5462f}.grid{stroke:#d5d9de}td.hit{background:#fde9e4;font-weight:600}.note{color:#4a5360}";

/// The report page. `command` is the command line that made it (shown on the page).
pub fn html(report: &Report, command: &str) -> String {
    let mut h = String::with_capacity(32 << 10);
    let total = report.alerts.len();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>carewatch alarm burden {from} .. {to}</title><style>{STYLE}</style></head><body>\
         <header><h1>Alarm burden</h1><p>Backtest from <b>{from}</b> to <b>{to}</b>: \
         <span data-metric=\"patient_days\">{pd}</span> patient-days with data, \
         <span data-metric=\"alerts_total\">{total}</span> alerts from {n} rules.</p>\
         <p class=\"note\">Made by <code>{cmd}</code>. Episodes are found by the same function as live \
         evaluation; a patient-day is a (patient, UTC day) with data for a rule.</p></header>",
        from = esc(&report.from),
        to = esc(&report.to),
        pd = report.patient_days,
        n = report.rules.len(),
        cmd = esc(command),
    );
    per_rule(&mut h, report);
    patients(&mut h, report);
    hours(&mut h, report);
    if let Some(s) = &report.sweep {
        sweep(&mut h, s);
    }
    h.push_str("</body></html>\n");
    h
}

/// Horizontal bars: `(label, value, shown text)`.
fn hbars(items: &[(String, f64, String)]) -> String {
    let max = items.iter().map(|i| i.1).fold(0.0_f64, f64::max).max(1e-9);
    let (label_w, bar_w, row) = (190.0, 520.0, 22.0);
    let height = row * items.len() as f64 + 6.0;
    let mut s = format!(
        "<svg role=\"img\" width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\">",
        w = label_w + bar_w + 90.0
    );
    for (i, (label, v, text)) in items.iter().enumerate() {
        let y = i as f64 * row + 3.0;
        let w = (v / max * bar_w).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{ty}\">{l}</text><rect class=\"bar\" x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bh}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{t}</text>",
            ty = y + 14.0,
            l = esc(label),
            bh = row - 6.0,
            tx = label_w + w + 6.0,
            t = esc(text),
        );
    }
    s.push_str("</svg>");
    s
}

fn per_rule(h: &mut String, r: &Report) {
    h.push_str("<section id=\"per-rule\"><h2>Alerts per patient-day, per rule</h2>");
    let items: Vec<(String, f64, String)> = r
        .rules
        .iter()
        .map(|x| {
            let t = format!("{:.3}", x.alerts_per_patient_day);
            (x.rule.clone(), x.alerts_per_patient_day, t)
        })
        .collect();
    h.push_str(&hbars(&items));
    h.push_str("<table><thead><tr><th>rule</th><th>alerts</th><th>patients</th><th>alerts per patient-day</th></tr></thead><tbody>");
    for x in &r.rules {
        let id = esc(&x.rule);
        let _ = write!(
            h,
            "<tr><td>{id}</td><td data-metric=\"rule:{id}:alerts\">{}</td><td data-metric=\"rule:{id}:patients\">{}</td>\
             <td data-metric=\"rule:{id}:per_patient_day\">{:.3}</td></tr>",
            x.alerts, x.patients, x.alerts_per_patient_day
        );
    }
    h.push_str("</tbody></table></section>");
}

fn patients(h: &mut String, r: &Report) {
    let b = &r.burden;
    let _ = write!(
        h,
        "<section id=\"patients\"><h2>Patients who produce most alerts</h2>\
         <p>The top tenth of patients ({n} of {all}) produce <b data-metric=\"top_tenth_share\">{:.1}</b>% of the alerts.</p>",
        b.top_tenth_share * 100.0,
        n = b.patients.len().div_ceil(10),
        all = b.patients.len(),
    );
    let top: Vec<_> = b
        .patients
        .iter()
        .filter(|p| p.alerts > 0)
        .take(20)
        .collect();
    let items: Vec<(String, f64, String)> = top
        .iter()
        .map(|p| (p.patient_id.clone(), p.alerts as f64, p.alerts.to_string()))
        .collect();
    h.push_str(&hbars(&items));
    h.push_str("<table><thead><tr><th>patient</th><th>alerts</th><th>days with data</th><th>alerts per day</th><th>share</th><th>by rule</th></tr></thead><tbody>");
    for p in &top {
        let id = esc(&p.patient_id);
        let rules: Vec<String> = p
            .by_rule
            .iter()
            .map(|(k, v)| format!("{} {v}", esc(k)))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{id}</td><td data-metric=\"patient:{id}:alerts\">{}</td><td>{}</td><td>{:.2}</td><td>{:.1}%</td><td>{}</td></tr>",
            p.alerts,
            p.patient_days,
            p.alerts_per_patient_day,
            p.share * 100.0,
            rules.join(", ")
        );
    }
    h.push_str("</tbody></table></section>");
}

fn hours(h: &mut String, r: &Report) {
    let b = &r.burden;
    h.push_str("<section id=\"hours\"><h2>Time of day (UTC, episode start)</h2>");
    let max = b.hours_total.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (cw, ch) = (30.0, 160.0);
    let _ = write!(
        h,
        "<svg role=\"img\" width=\"{w}\" height=\"{hh}\" viewBox=\"0 0 {w} {hh}\"><line class=\"grid\" x1=\"0\" x2=\"{w}\" y1=\"{ch}\" y2=\"{ch}\"/>",
        w = cw * 24.0,
        hh = ch + 36.0
    );
    for (i, n) in b.hours_total.iter().enumerate() {
        let bh = *n as f64 / max * (ch - 16.0);
        let x = i as f64 * cw;
        let _ = write!(
            h,
            "<rect class=\"bar\" x=\"{bx:.1}\" y=\"{y:.1}\" width=\"{bw}\" height=\"{bh:.1}\"/><text x=\"{tx:.1}\" y=\"{ly}\">{i:02}</text>\
             <text x=\"{tx:.1}\" y=\"{vy:.1}\">{n}</text>",
            bx = x + 3.0,
            y = ch - bh,
            bw = cw - 6.0,
            tx = x + 7.0,
            ly = ch + 16.0,
            vy = (ch - bh - 3.0).max(10.0),
        );
    }
    h.push_str("</svg><table><thead><tr><th>rule</th>");
    for i in 0..24 {
        let _ = write!(h, "<th>{i:02}</th>");
    }
    h.push_str("</tr></thead><tbody>");
    let rows = b
        .hours
        .iter()
        .map(|x| (x.rule.as_str(), &x.counts))
        .chain(std::iter::once(("all", &b.hours_total)));
    for (rule, counts) in rows {
        let id = esc(rule);
        let _ = write!(h, "<tr><td>{id}</td>");
        for (i, n) in counts.iter().enumerate() {
            let _ = write!(h, "<td data-metric=\"hour:{id}:{i:02}\">{n}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></section>");
}

/// The metric key of a sweep cell: `sweep:threshold=100:for_minutes=10`.
pub fn cell_key(s: &Sweep, cell: &super::Cell) -> String {
    let mut k = String::from("sweep");
    for a in &s.axes {
        if let Some(v) = cell.params.get(&a.param) {
            let _ = write!(k, ":{}={v}", a.param);
        }
    }
    k
}

fn sweep(h: &mut String, s: &Sweep) {
    let rp: Vec<String> = s
        .reference_params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = write!(
        h,
        "<section id=\"sweep\"><h2>Parameter sweep: {rule}</h2><p>Each cell: alerts per patient-day \
         (alerts) · reference episodes caught. The reference is the rule as given ({rp}): \
         <b data-metric=\"sweep:reference\">{n}</b> episodes over {pd} patient-days. Other parameters stay as given.</p>",
        rule = esc(&s.rule),
        rp = esc(&rp.join(", ")),
        n = s.reference,
        pd = s.patient_days,
    );
    grid(h, s);
    scatter(h, s);
    h.push_str("</section>");
}

fn grid(h: &mut String, s: &Sweep) {
    let (rows, cols) = match s.axes.as_slice() {
        [a] => (a, None),
        [a, b] => (a, Some(b)),
        _ => return,
    };
    let _ = write!(h, "<table><thead><tr><th>{}", esc(&rows.param));
    if let Some(c) = cols {
        let _ = write!(h, " \\ {}", esc(&c.param));
        for v in &c.values {
            let _ = write!(h, "</th><th>{v}");
        }
    } else {
        h.push_str("</th><th>");
    }
    h.push_str("</th></tr></thead><tbody>");
    let per_row = cols.map_or(1, |c| c.values.len());
    for (i, v) in rows.values.iter().enumerate() {
        let _ = write!(h, "<tr><td>{v}</td>");
        for cell in s.cells.iter().skip(i * per_row).take(per_row) {
            let key = cell_key(s, cell);
            let is_ref = cell
                .params
                .iter()
                .all(|(k, v)| s.reference_params.get(k) == Some(v));
            let _ = write!(
                h,
                "<td{cls}><span data-metric=\"{key}:per_patient_day\">{:.3}</span> (<span data-metric=\"{key}:alerts\">{}</span>) · \
                 <span data-metric=\"{key}:caught\">{}</span></td>",
                cell.alerts_per_patient_day,
                cell.alerts,
                cell.caught,
                cls = if is_ref { " class=\"hit\"" } else { "" },
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
}

/// Alerts per patient-day (x, square-root scale so the quiet cells spread out) against
/// reference episodes caught (y); each point labelled with its values in axis order.
fn scatter(h: &mut String, s: &Sweep) {
    let (w, ht, pad) = (720.0, 340.0, 48.0);
    let xmax = s
        .cells
        .iter()
        .map(|c| c.alerts_per_patient_day)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let ymax = s.reference.max(1) as f64;
    let names: Vec<&str> = s.axes.iter().map(|a| a.param.as_str()).collect();
    let _ = write!(
        h,
        "<svg role=\"img\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\">\
         <line class=\"grid\" x1=\"{pad}\" x2=\"{pad}\" y1=\"8\" y2=\"{b}\"/><line class=\"grid\" x1=\"{pad}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\"/>\
         <text x=\"{pad}\" y=\"{xl}\">alerts per patient-day (square-root scale, 0 – {xmax:.3}); points: {names}</text>\
         <text x=\"4\" y=\"14\">episodes caught (of {ref_n})</text>",
        b = ht - pad,
        r = w - 8.0,
        xl = ht - 16.0,
        ref_n = s.reference,
        names = esc(&names.join(" / ")),
    );
    for c in &s.cells {
        let x = pad + (c.alerts_per_patient_day / xmax).sqrt() * (w - pad - 20.0);
        let y = (ht - pad) - c.caught as f64 / ymax * (ht - pad - 24.0);
        let label: Vec<String> = names
            .iter()
            .filter_map(|n| c.params.get(*n).map(|v| v.to_string()))
            .collect();
        let (tx, anchor) = if x > w * 0.8 {
            (x - 6.0, "end")
        } else {
            (x + 6.0, "start")
        };
        let _ = write!(
            h,
            "<circle class=\"bar\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\"><title>{t}: {a:.3} alerts per patient-day, {k} caught</title></circle>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"{anchor}\">{t}</text>",
            t = esc(&label.join("/")),
            a = c.alerts_per_patient_day,
            k = c.caught,
            ty = y - 5.0,
        );
    }
    h.push_str("</svg>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed_and_html_is_escaped() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a, \"b\""), "\"a, \"\"b\"\"\"");
        assert_eq!(
            esc("<p id=\"x\">&</p>"),
            "&lt;p id=&quot;x&quot;&gt;&amp;&lt;/p&gt;"
        );
    }
}
