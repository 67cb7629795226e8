//! A merge's files on disk rather than in memory. The merge reads its inputs and writes its
//! output a page at a time ([`crate::merge`]); what it reads from and writes to are files: the
//! table's own files when the tables are on this machine, else downloads into anonymous
//! temporary files in the data directory; the output is an anonymous temporary file uploaded
//! once complete (in parts, so it is never whole in memory either). At 100,000 patients a
//! 256 MiB merge held its inputs' and its output's compressed bytes in memory: ~0.5 GiB at each
//! merge. Anonymous files (`O_TMPFILE`) have no name, so a crash leaves nothing to clean up.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjPath;
use tokio::io::AsyncWriteExt;

use super::persist::blocking;
use super::{Inner, io};
use crate::Result;

/// Parts of an upload: object stores' multipart minimum is 5 MiB.
const PART_BYTES: usize = 8 << 20;

/// An empty anonymous file in the data directory.
pub(super) async fn temp_file(inner: &Inner) -> Result<File> {
    let dir = inner.config.data_dir.clone();
    blocking(move || tempfile::tempfile_in(dir).map_err(io)).await
}

/// A file of a table, to read: the file itself when the tables are on this machine, else a
/// download of it into an anonymous file.
pub(super) async fn input(inner: &Inner, path: &ObjPath) -> Result<File> {
    if let Some(root) = &inner.local_root {
        let file = root.join(path.as_ref());
        return blocking(move || File::open(file).map_err(io)).await;
    }
    let mut out = tokio::fs::File::from_std(temp_file(inner).await?);
    let mut body = inner.objects.get(path).await.map_err(io)?.into_stream();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.map_err(io)?).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    Ok(out.into_std().await)
}

/// Uploads a complete file to `path` in parts; returns its size. Nothing is left at `path` on
/// an error (a multipart upload is aborted; a local one is written aside and renamed at the
/// end).
pub(super) async fn upload(inner: &Inner, path: &ObjPath, mut file: File) -> Result<u64> {
    let size = blocking(move || {
        let size = file.seek(SeekFrom::End(0)).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok((size, file))
    })
    .await;
    let (size, file) = size?;
    let mut from = tokio::fs::File::from_std(file);
    let mut to = BufWriter::with_capacity(inner.objects.clone(), path.clone(), PART_BYTES);
    let copied = async {
        tokio::io::copy(&mut from, &mut to).await?;
        to.shutdown().await
    }
    .await;
    if let Err(e) = copied {
        let _ = to.abort().await;
        return Err(io(e));
    }
    Ok(size)
}
