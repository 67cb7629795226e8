//! The HTTP side of the crash loop: raw HTTP/1.1 posts of mixed good, malformed and oversized
//! batches, each answer written into the ledger (what was acknowledged, what was not).

use super::*;

pub(super) fn post(addr: &str, token: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST /v1/readings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // A server refusing a too-large body may answer and close before reading it all.
    let wrote = s.write_all(body);
    let mut resp = Vec::new();
    let read = s.read_to_end(&mut resp);
    let incomplete = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "incomplete");
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        wrote?;
        read?;
        return Err(incomplete());
    };
    let head = String::from_utf8_lossy(&resp[..end]).to_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(incomplete)?;
    let rest = &resp[end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let nl = r
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(incomplete)?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&r[..nl]).trim(), 16)
                .map_err(|_| incomplete())?;
            if size == 0 {
                break;
            }
            let chunk = r.get(nl + 2..nl + 2 + size).ok_or_else(incomplete)?;
            out.extend_from_slice(chunk);
            r = r.get(nl + 4 + size..).ok_or_else(incomplete)?;
        }
        out
    } else {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match len {
            Some(n) if rest.len() < n => return Err(incomplete()),
            Some(n) => rest[..n].to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Records items sent without a definite answer.
pub(super) fn unanswered(l: &mut Ledger, device: &str, items: &[Item], body: &[u8]) {
    for it in items {
        let key = (device.to_owned(), it.time_ms);
        match it.kind {
            Kind::Valid => l.unknown.push(key),
            Kind::OutOfRange => l.never.push((key, "out_of_range, unanswered")),
            Kind::Malformed => {}
        }
    }
    let bad = items.iter().filter(|i| i.kind != Kind::Valid).count();
    if bad > 0 {
        l.dead_unknown.push((sha_hex(body), bad));
    }
}

/// One HTTP worker: bounded batches until told to stop or the server is gone.
pub(super) fn http_worker(
    addr: String,
    device: &'static str,
    secret: String,
    cycle: usize,
    seed: u64,
    clock: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) -> Ledger {
    let mut rng = Rng(seed | 1);
    let mut l = Ledger::default();
    for _ in 0..HTTP_REQUESTS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        l.http_requests += 1;
        let shape = rng.below(12);
        let items: Vec<Item> = match shape {
            // Oversized: a few good readings padded (JSON whitespace) past max_payload_bytes.
            0 => (0..3).map(|_| item(&clock, Kind::Valid)).collect(),
            // Nothing good: one out-of-range object (422, still dead-lettered).
            1 => vec![item(&clock, Kind::OutOfRange)],
            // A mixed NDJSON batch; its first line is good so the body reads as NDJSON.
            _ => (0..LINES_PER_BATCH)
                .map(|i| {
                    let kind = match (i, rng.below(10)) {
                        (0, _) => Kind::Valid,
                        (_, 0) => Kind::Malformed,
                        (_, 1) => Kind::OutOfRange,
                        _ => Kind::Valid,
                    };
                    item(&clock, kind)
                })
                .collect(),
        };
        let mut body = items
            .iter()
            .map(|i| i.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if shape == 0 {
            body.insert_str(1, &" ".repeat(MAX_PAYLOAD + 1));
        }
        let body = body.into_bytes();
        match post(&addr, &secret, &body) {
            Err(_) => {
                // Killed mid-request (or just before): nothing is known about this one.
                unanswered(&mut l, device, &items, &body);
                l.http_cut += 1;
                break;
            }
            Ok((413, _)) if shape == 0 => {
                l.http_413 += 1;
                for it in &items {
                    l.never.push((
                        (device.to_owned(), it.time_ms),
                        "in a body refused with 413",
                    ));
                }
            }
            Ok((503, _)) => unanswered(&mut l, device, &items, &body),
            Ok((status @ (202 | 422), text)) if shape != 0 => {
                let v: serde_json::Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(_) => {
                        l.surprises
                            .push(format!("cycle {cycle}: {status} with a non-JSON body"));
                        unanswered(&mut l, device, &items, &body);
                        continue;
                    }
                };
                let rejected = v["rejected"].as_array().cloned().unwrap_or_default();
                let mut bad: HashMap<usize, String> = HashMap::new();
                for r in &rejected {
                    let reason = r["reason"].as_str().unwrap_or("").to_owned();
                    match r["index"].as_u64() {
                        Some(i) => {
                            bad.insert(i as usize, reason);
                        }
                        // No index: the whole message.
                        None => bad.extend((0..items.len()).map(|i| (i, reason.clone()))),
                    }
                }
                for (i, it) in items.iter().enumerate() {
                    let key = (device.to_owned(), it.time_ms);
                    let want = match it.kind {
                        Kind::Valid => None,
                        Kind::OutOfRange => Some("out_of_range"),
                        Kind::Malformed => Some("invalid_json"),
                    };
                    let got = bad.get(&i).map(String::as_str);
                    if got != want {
                        l.surprises.push(format!(
                            "cycle {cycle}: HTTP item {i} ({:?}) answered {got:?}, expected {want:?}",
                            it.kind
                        ));
                    }
                    match (it.kind, got) {
                        (Kind::Valid, None) => l.acked.push((key, cycle, "http")),
                        (Kind::Valid, Some(_)) => l.unknown.push(key),
                        (Kind::OutOfRange, _) => l.never.push((key, "out_of_range, answered")),
                        (Kind::Malformed, _) => {}
                    }
                }
                let accepted = v["accepted"].as_u64().unwrap_or(u64::MAX) as usize;
                if accepted != items.len() - bad.len() {
                    l.surprises.push(format!(
                        "cycle {cycle}: accepted {accepted} of {} items with {} rejected",
                        items.len(),
                        bad.len()
                    ));
                }
                if !rejected.is_empty() {
                    l.dead_acked.push((sha_hex(&body), rejected.len(), cycle));
                }
            }
            Ok((status, text)) => {
                l.surprises.push(format!(
                    "cycle {cycle}: shape {shape} answered {status}: {}",
                    text.chars().take(200).collect::<String>()
                ));
                unanswered(&mut l, device, &items, &body);
            }
        }
    }
    l
}
