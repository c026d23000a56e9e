//! The summary epochs (see `cache`): one counter per tenant, and one for all of them.

use super::{Storage, StorageError};
use crate::tenant::Tenant;

/// The epoch row that counts for every tenant.
pub const ALL_TENANTS_EPOCH: &str = "*";

impl Storage {
    /// The tenant's epoch: its own counter plus the one of all tenants, so that a bump of
    /// either changes it.
    pub async fn summary_epoch(&self, tenant: &Tenant) -> Result<i64, StorageError> {
        let epoch = sqlx::query_scalar!(
            r#"select coalesce(sum(epoch), 0)::bigint as "epoch!"
               from summary_epochs where tenant = $1 or tenant = $2"#,
            tenant.as_str(),
            ALL_TENANTS_EPOCH,
        )
        .fetch_one(&self.pool);
        self.run(epoch).await
    }

    /// Bumps these tenants' epochs (`ALL_TENANTS_EPOCH` among them bumps every tenant's), in
    /// one statement.
    pub async fn bump_summary_epochs(&self, tenants: &[&str]) -> Result<(), StorageError> {
        let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
        let bumped = sqlx::query!(
            "insert into summary_epochs (tenant, epoch) select unnest($1::text[]), 1
             on conflict (tenant) do update set epoch = summary_epochs.epoch + 1",
            &tenants,
        )
        .execute(&self.pool);
        self.run(bumped).await.map(drop)
    }
}
