//! The tables' object store under a URL's path (`s3://bucket/prefix`): `object_store`'s
//! `PrefixStore`, except that `head`/`get` answer the location asked for.
//!
//! `PrefixStore::get_opts` in object_store 0.13 returns the inner store's location, prefix
//! included (apache/arrow-rs-object-store#664, fixed only in 0.14, which DataFusion 55 does not
//! use). DataFusion's listing table `head`s each file it is given and keeps it only if the
//! answered location lies under the asked one, so every persisted file of tables under a
//! prefix was silently dropped from queries: a node answered only its buffered rows.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// A `PrefixStore` whose `get_opts` (and so `head`) reports table-relative locations.
#[derive(Debug)]
pub(crate) struct Prefixed(PrefixStore<Arc<dyn ObjectStore>>);

impl Prefixed {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, prefix: impl Into<Path>) -> Self {
        Prefixed(PrefixStore::new(inner, prefix))
    }
}

impl std::fmt::Display for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Prefixed {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut got = self.0.get_opts(location, options).await?;
        got.meta.location = location.clone();
        Ok(got)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn head_and_get_answer_the_location_asked_for() {
        let root: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let tables = Prefixed::new(root.clone(), "tables");
        let p = Path::from("observations/date=2024-05-01/wal-1-1.parquet");
        tables
            .put(&p, Bytes::from_static(b"x").into())
            .await
            .expect("put");
        assert_eq!(tables.head(&p).await.expect("head").location, p);
        assert_eq!(tables.get(&p).await.expect("get").meta.location, p);
        let listed: Vec<ObjectMeta> = futures::TryStreamExt::try_collect(tables.list(None))
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, p);
        let full = Path::from("tables/observations/date=2024-05-01/wal-1-1.parquet");
        assert_eq!(root.head(&full).await.expect("inner").location, full);
    }
}
