//! The data-side commands: `carewatch sql`, `replay`, `rules check` and `rules backtest`, on a
//! data directory or against a running server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::{BacktestArgs, ReplayArgs, SqlArgs};

pub(crate) fn sql(a: SqlArgs) -> Result<ExitCode> {
    use std::io::Write;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let batches = match &a.server {
        Some(server) => {
            let token = a
                .token
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--server needs --token (or CAREWATCH_TOKEN)"))?;
            let url = format!("{}/v1/sql", server.trim_end_matches('/'));
            rt.block_on(async {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .header("accept", "application/vnd.apache.arrow.stream")
                    .body(a.query.clone())
                    .send()
                    .await?;
                let status = r.status();
                let body = r.bytes().await?;
                if !status.is_success() {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    anyhow::bail!("{}", v["message"].as_str().unwrap_or("query failed"));
                }
                let reader = arrow_ipc::reader::StreamReader::try_new(
                    std::io::Cursor::new(body.to_vec()),
                    None,
                )?;
                Ok(reader.collect::<Result<Vec<_>, _>>()?)
            })?
        }
        None => rt.block_on(async {
            let q = offline_engine(&a.data_dir).await?;
            q.collect(&a.query)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?,
    };
    let mut out = std::io::stdout().lock();
    match a.format.as_str() {
        "table" => writeln!(
            out,
            "{}",
            arrow_cast::pretty::pretty_format_batches(&batches)?
        )?,
        "csv" => {
            let mut w = arrow_csv::Writer::new(&mut out);
            for b in &batches {
                w.write(b)?;
            }
        }
        "json" => {
            let mut w = arrow_json::ArrayWriter::new(&mut out);
            for b in &batches {
                w.write(b)?;
            }
            w.finish()?;
            writeln!(out)?;
        }
        other => anyhow::bail!("--format {other:?}: use table, csv or json"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn replay(a: ReplayArgs) -> Result<ExitCode> {
    use carewatch_ingest::replay::{ReplayOptions, ReplayReport};
    let tz = match &a.assume_tz {
        Some(z) => carewatch_transform::ZonePolicy::parse(z).map_err(anyhow::Error::msg)?,
        None => carewatch_transform::ZonePolicy::Reject,
    };
    let csv_map = a
        .csv_map
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow::anyhow!("--csv-map takes field=column pairs"))?;
    let opts = ReplayOptions {
        csv_map,
        register_devices: a.register_devices,
        batch: a.batch,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(server) = &a.server {
        if a.assume_tz.is_some() {
            anyhow::bail!("with --server, zone-less times follow the server's --assume-tz");
        }
        let remote = carewatch_ingest::replay::Remote {
            client: reqwest::Client::new(),
            base: server.trim_end_matches('/').to_owned(),
            token: a
                .token
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--server needs --token (an admin token)"))?,
        };
        let total = rt.block_on(replay_files(
            carewatch_ingest::replay::Sink::Remote(&remote),
            &a.files,
            &opts,
        ))?;
        return Ok(replay_summary(&total));
    }
    let total: ReplayReport = rt.block_on(async {
        let store = carewatch_store::Store::open(carewatch_store::Config::new(&a.data_dir)).await?;
        let (registry, admin) = carewatch_store::registry::Registry::open(&a.data_dir)?;
        if let Some(t) = admin {
            println!("admin token: {t}");
        }
        let pipeline = carewatch_ingest::Pipeline {
            store: store.clone(),
            registry: std::sync::Arc::new(registry),
            templates: Default::default(),
            tz,
            max_bytes: 256 << 20,
            max_future_skew_us: carewatch_ingest::pipeline::DEFAULT_MAX_FUTURE_SKEW_US,
        };
        let total = replay_files(
            carewatch_ingest::replay::Sink::Local(&pipeline),
            &a.files,
            &opts,
        )
        .await?;
        store.close().await?;
        anyhow::Ok(total)
    })?;
    Ok(replay_summary(&total))
}

/// Replays files into a sink, one progress spinner and one summary line per file.
async fn replay_files(
    sink: carewatch_ingest::replay::Sink<'_>,
    files: &[PathBuf],
    opts: &carewatch_ingest::replay::ReplayOptions,
) -> Result<carewatch_ingest::replay::ReplayReport> {
    let mut total = carewatch_ingest::replay::ReplayReport::default();
    for f in files {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(f.display().to_string());
        let r = carewatch_ingest::replay::replay_file(sink, f, opts, &|n| bar.set_position(n))
            .await
            .map_err(anyhow::Error::msg)?;
        bar.finish_and_clear();
        println!(
            "{}: {} items, {} readings stored, {} rejected",
            f.display(),
            r.items,
            r.accepted,
            r.rejected.values().sum::<u64>()
        );
        total.merge(r);
    }
    Ok(total)
}

fn replay_summary(total: &carewatch_ingest::replay::ReplayReport) -> ExitCode {
    println!(
        "replayed {} items: {} readings stored, {} devices registered",
        total.items, total.accepted, total.registered
    );
    for (k, v) in &total.rejected {
        println!("rejected {k} {v}");
    }
    if total.accepted > 0 || total.items == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A read-only query session on a data directory (for `sql`, `rules`), with the default
/// baseline settings.
async fn offline_engine(data_dir: &std::path::Path) -> Result<carewatch_query::QueryEngine> {
    offline_engine_with(data_dir, Default::default()).await
}

/// [`offline_engine`] with these baseline settings (`rules backtest`).
async fn offline_engine_with(
    data_dir: &std::path::Path,
    baselines: carewatch_alert::baselines::BaselineConfig,
) -> Result<carewatch_query::QueryEngine> {
    let mut c = carewatch_store::Config::new(data_dir);
    c.read_only = true;
    let store = carewatch_store::Store::open(c).await?;
    let baselines = carewatch_alert::baselines::Baselines::open(&store, Some(data_dir), baselines)
        .map_err(anyhow::Error::msg)?;
    let registry = carewatch_store::registry::Registry::open_read_only(data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let q = carewatch_query::QueryEngine::new(
        store,
        std::sync::Arc::new(registry),
        carewatch_query::QueryLimits {
            timeout: std::time::Duration::from_secs(3600),
            ..carewatch_query::QueryLimits::default()
        },
        std::sync::Arc::new(carewatch_query::audit::AuditLog::open(data_dir, true)?),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    carewatch_alert::history::register(
        q.context(),
        std::sync::Arc::new(carewatch_alert::history::History::open(data_dir, true)?),
    )?;
    carewatch_alert::baselines::register(q.context(), &baselines).map_err(anyhow::Error::msg)?;
    Ok(q)
}

pub(crate) fn rules_check(rules_dir: Option<PathBuf>, data_dir: PathBuf) -> Result<ExitCode> {
    let rules = carewatch_alert::rules::load(rules_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let q = offline_engine(&data_dir).await?;
        carewatch_alert::rules::check(q.context(), &rules).await?;
        anyhow::Ok(())
    })?;
    for r in &rules {
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<18} {:<8} {:<34} {}{}",
            r.id,
            r.severity.as_str(),
            r.title,
            params.join(" "),
            if r.enabled { "" } else { " (disabled)" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_instant(s: &str, what: &str) -> Result<i64> {
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(d.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros())
            .unwrap_or_default());
    }
    anyhow::bail!("{what} {s:?}: use RFC 3339 (2016-04-12T00:00:00Z) or a date (2016-04-12)")
}

pub(crate) fn backtest(a: BacktestArgs) -> Result<ExitCode> {
    let from = parse_instant(&a.from, "--from")?;
    let to = parse_instant(&a.to, "--to")?;
    if to <= from {
        anyhow::bail!("--to must be after --from");
    }
    if !matches!(a.format.as_str(), "text" | "json" | "csv") {
        anyhow::bail!("--format {:?}: use text, json or csv", a.format);
    }
    let baselines = carewatch_alert::baselines::BaselineConfig {
        window_days: a.baseline_window_days,
        max_steps: a.baseline_max_steps,
    };
    baselines.validate().map_err(anyhow::Error::msg)?;
    let rules = backtest_rules(&a)?;
    let sweep = sweep_plan(&a, &rules)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("backtest (rule-days)");
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = rt.block_on(async {
        let q = offline_engine_with(&a.data_dir, baselines).await?;
        carewatch_alert::rules::check(q.context(), &rules).await?;
        let mut report =
            carewatch_alert::backtest::backtest(q.context(), &rules, from, to, &progress)
                .await
                .map_err(anyhow::Error::msg)?;
        if let Some((i, axes)) = &sweep {
            bar.set_message("parameter sweep (cells)");
            let rule = &rules[*i];
            let reference: Vec<_> = report
                .alerts
                .iter()
                .filter(|f| f.rule == rule.id)
                .cloned()
                .collect();
            let grid = carewatch_alert::backtest::sweep::sweep(
                q.context(),
                rule,
                axes,
                (from, to),
                report.patient_days,
                &reference,
                &progress,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            report.sweep = Some(grid);
        }
        anyhow::Ok(report)
    })?;
    bar.finish_and_clear();
    if let Some(path) = &a.report {
        let command: Vec<String> = std::env::args().collect();
        let page = carewatch_alert::backtest::report::html(&report, &command.join(" "));
        std::fs::write(path, page)
            .map_err(|e| anyhow::anyhow!("--report {}: {e}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    print_backtest(&a.format, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// The rules a backtest runs: the selected ones (all enabled by default), with `--param`s.
fn backtest_rules(a: &BacktestArgs) -> Result<Vec<carewatch_alert::rules::Rule>> {
    use carewatch_alert::rules::{Param, load};
    let mut rules = load(a.rules_dir.as_deref())?;
    if !a.rules.is_empty() {
        for r in &a.rules {
            if !rules.iter().any(|x| &x.id == r) {
                let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
                anyhow::bail!("no rule {r:?}; rules: {}", ids.join(", "));
            }
        }
        rules.retain(|r| a.rules.contains(&r.id));
    } else {
        rules.retain(|r| r.enabled);
    }
    for kv in &a.params {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--param takes name=value"))?;
        let v = Param::parse(v).ok_or_else(|| {
            anyhow::anyhow!("--param {kv:?}: the value must be a number or true/false")
        })?;
        let mut used = false;
        for r in rules.iter_mut() {
            used |= r.set_param(k.trim(), v).is_ok();
        }
        if !used {
            anyhow::bail!("--param {k}: none of the selected rules has that parameter");
        }
    }
    Ok(rules)
}

/// Which rule to sweep and over what (index into `rules`), when a report or a sweep is asked.
fn sweep_plan(
    a: &BacktestArgs,
    rules: &[carewatch_alert::rules::Rule],
) -> Result<Option<(usize, Vec<carewatch_alert::backtest::sweep::Axis>)>> {
    use carewatch_alert::backtest::sweep::{Axis, default_axes};
    if a.report.is_none() && a.sweep.is_empty() && a.sweep_rule.is_none() {
        return Ok(None);
    }
    if a.sweep.len() > 2 {
        anyhow::bail!("--sweep: at most two axes");
    }
    let i = match &a.sweep_rule {
        Some(id) => rules.iter().position(|r| &r.id == id).ok_or_else(|| {
            anyhow::anyhow!("--sweep-rule {id:?} is not among the rules backtested")
        })?,
        None => match rules.iter().position(|r| r.id == "hr_high_at_rest") {
            Some(i) => i,
            None => match rules.iter().position(|r| !default_axes(r).is_empty()) {
                Some(i) => i,
                None if a.sweep.is_empty() => return Ok(None),
                None => anyhow::bail!("--sweep needs --sweep-rule"),
            },
        },
    };
    let axes = if a.sweep.is_empty() {
        default_axes(&rules[i])
    } else {
        a.sweep
            .iter()
            .map(|s| Axis::parse(&rules[i], s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?
    };
    Ok((!axes.is_empty()).then_some((i, axes)))
}

fn print_backtest(format: &str, report: &carewatch_alert::backtest::Report) -> Result<()> {
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(report)?),
        "csv" => print!("{}", carewatch_alert::backtest::report::csv(report)),
        _ => {
            println!(
                "backtest {} .. {}: {} patient-days with data",
                report.from, report.to, report.patient_days
            );
            println!(
                "{:<18} {:>7} {:>9} {:>18}",
                "rule", "alerts", "patients", "per patient-day"
            );
            for r in &report.rules {
                println!(
                    "{:<18} {:>7} {:>9} {:>18.3}",
                    r.rule, r.alerts, r.patients, r.alerts_per_patient_day
                );
            }
            println!();
            for f in &report.alerts {
                println!(
                    "{} {} {} .. {} ({} min) {}",
                    f.rule, f.patient_id, f.start, f.end, f.minutes, f.message
                );
            }
        }
    }
    Ok(())
}
