//! The `metric_series` table: the identity of every (tenant, type, tags) stored, resolved
//! before its points are inserted, and the series that a tag filter selects.

use std::{collections::HashMap, sync::Mutex};

use sha2::{Digest, Sha256};

use super::{Storage, StorageError};
use crate::{
    metric::{TagFilter, TenantPoint},
    tenant::Tenant,
};

/// Series ids remembered, at most, per generation (see [`SeriesIds`]): 16 bytes of hash and 8
/// of id an entry, so two generations hold some 10 MB at most, whatever the tags' size.
const MAX_REMEMBERED_SERIES: usize = 200_000;

/// A series' identity, hashed: the same for the same tenant, type and tags.
type SeriesHash = [u8; 16];

fn series_hash(point: &TenantPoint) -> SeriesHash {
    let mut hasher = Sha256::new();
    // Separated by a byte none of the three can contain (tenants and types have no control
    // characters; in JSON text, a control character is escaped).
    for part in [
        point.tenant.as_str(),
        point.point.metric_type.as_str(),
        point.point.tags.as_json(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0x1f]);
    }
    hasher.finalize()[..16]
        .try_into()
        .expect("a SHA-256 is 32 bytes")
}

/// The ids of series already in `metric_series`, so that ingesting known series costs no
/// statement. Two generations: when the current one is full, it becomes the previous one and
/// the one before is dropped; an id found in the previous one moves to the current.
#[derive(Default)]
pub(super) struct SeriesIds {
    generations: Mutex<[HashMap<SeriesHash, i64>; 2]>,
}

impl SeriesIds {
    fn get(&self, hash: &SeriesHash) -> Option<i64> {
        let mut generations = self.generations.lock().expect("never poisoned");
        let [current, previous] = &mut *generations;
        if let Some(id) = current.get(hash) {
            return Some(*id);
        }
        let id = previous.remove(hash)?;
        Self::put(&mut generations, *hash, id);
        Some(id)
    }

    fn remember(&self, hash: SeriesHash, id: i64) {
        Self::put(
            &mut self.generations.lock().expect("never poisoned"),
            hash,
            id,
        );
    }

    fn put(generations: &mut [HashMap<SeriesHash, i64>; 2], hash: SeriesHash, id: i64) {
        if generations[0].len() >= MAX_REMEMBERED_SERIES {
            generations.swap(0, 1);
            generations[0] = HashMap::new();
        }
        generations[0].insert(hash, id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.generations
            .lock()
            .unwrap()
            .iter()
            .map(HashMap::len)
            .sum()
    }
}

impl Storage {
    /// The series id of every point, in their order: remembered, or found or created in
    /// `metric_series` (two statements for all the unknown series of the points).
    pub(super) async fn series_ids(
        &self,
        points: &[TenantPoint],
    ) -> Result<Vec<i64>, StorageError> {
        let mut ids: Vec<Option<i64>> = Vec::with_capacity(points.len());
        // Unknown series: the first point of each, and the points waiting for its id.
        let mut unknown: HashMap<SeriesHash, (usize, Vec<usize>)> = HashMap::new();
        let mut last: Option<(&TenantPoint, SeriesHash, Option<i64>)> = None;
        for (position, point) in points.iter().enumerate() {
            // A receiver's points come series by series: a run of one series is hashed once.
            let (hash, id) = match last {
                Some((last_point, hash, id)) if same_series(last_point, point) => (hash, id),
                _ => {
                    let hash = series_hash(point);
                    (hash, self.series.get(&hash))
                }
            };
            if id.is_none() {
                unknown
                    .entry(hash)
                    .or_insert_with(|| (position, Vec::new()))
                    .1
                    .push(position);
            }
            ids.push(id);
            last = Some((point, hash, id));
        }
        if unknown.is_empty() {
            return Ok(ids.into_iter().flatten().collect());
        }
        let unknown: Vec<(SeriesHash, usize, Vec<usize>)> = unknown
            .into_iter()
            .map(|(hash, (first, positions))| (hash, first, positions))
            .collect();
        let firsts: Vec<&TenantPoint> = unknown
            .iter()
            .map(|(_, first, _)| &points[*first])
            .collect();
        let found = self.run(self.find_or_create_series(&firsts)).await?;
        for ((hash, _, positions), id) in unknown.into_iter().zip(found) {
            self.series.remember(hash, id);
            for position in positions {
                ids[position] = Some(id);
            }
        }
        Ok(ids
            .into_iter()
            .map(|id| id.expect("every series resolved"))
            .collect())
    }

    /// The ids of the points' series (distinct ones), in their order, created if need be.
    async fn find_or_create_series(
        &self,
        points: &[&TenantPoint],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let tenants: Vec<&str> = points.iter().map(|p| p.tenant.as_str()).collect();
        let types: Vec<&str> = points
            .iter()
            .map(|p| p.point.metric_type.as_str())
            .collect();
        let tags: Vec<&str> = points.iter().map(|p| p.point.tags.as_json()).collect();
        // Most series asked for exist (a restart forgets the remembered ids): looked up first,
        // the missing ones are created, then looked up again. The insert waits for a series
        // another writer is creating at this moment (as a conflict) until it is committed, so
        // the second lookup, a statement of its own, sees every series asked for; a single
        // statement could not, its snapshot being taken before the wait.
        let found = self.existing_series(&tenants, &types, &tags).await?;
        if found.len() == points.len() {
            return Ok(found);
        }
        sqlx::query!(
            // language=PostgreSQL
            r#"
            insert into metric_series (tenant, metric_type, tags)
            select * from unnest($1::text[], $2::text[], $3::jsonb[])
            on conflict (tenant, metric_type, md5(tags::text)) do nothing
            "#,
            &tenants as &[&str],
            &types as &[&str],
            &tags as &[&str] as _,
        )
        .execute(&self.pool)
        .await?;
        let found = self.existing_series(&tenants, &types, &tags).await?;
        if found.len() != points.len() {
            return Err(sqlx::Error::RowNotFound);
        }
        Ok(found)
    }

    /// The ids of those of the series (given column by column) that exist, in their order.
    async fn existing_series(
        &self,
        tenants: &[&str],
        types: &[&str],
        tags: &[&str],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let rows = sqlx::query!(
            // language=PostgreSQL
            r#"
            select s.id
            from unnest($1::text[], $2::text[], $3::jsonb[]) with ordinality as w (tenant, metric_type, tags, position)
            join metric_series s
              on s.tenant = w.tenant and s.metric_type = w.metric_type
             and md5(s.tags::text) = md5(w.tags::text) and s.tags = w.tags
            order by w.position
            "#,
            tenants as &[&str],
            types as &[&str],
            tags as &[&str] as _,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| row.id).collect())
    }

    /// The ids of the tenant's series (of one type, or of all) whose tags include every pair
    /// of the filter.
    pub(super) async fn matching_series(
        &self,
        tenant: &Tenant,
        metric_type: Option<&str>,
        filter: &TagFilter,
    ) -> Result<Vec<i64>, StorageError> {
        if filter.is_contradictory() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query!(
            // language=PostgreSQL
            r#"
            select id from metric_series
            where tenant = $1 and ($2::text is null or metric_type = $2) and tags @> $3::jsonb
            "#,
            tenant.as_str(),
            metric_type,
            filter.as_json() as _,
        )
        .fetch_all(&self.pool);
        Ok(self
            .run(rows)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect())
    }
}

fn same_series(a: &TenantPoint, b: &TenantPoint) -> bool {
    a.tenant == b.tenant
        && a.point.metric_type == b.point.metric_type
        && a.point.tags == b.point.tags
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::DateTime;

    use super::*;
    use crate::metric::{MetricPoint, Tags};

    fn point(tenant: &str, metric_type: &str, tags: &[(&str, &str)]) -> TenantPoint {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TenantPoint {
            tenant: tenant.parse().unwrap(),
            point: MetricPoint {
                timestamp: DateTime::UNIX_EPOCH,
                value: 1.0,
                metric_type: metric_type.parse().unwrap(),
                tags: Tags::from_checked(&tags),
            },
        }
    }

    #[test]
    fn a_series_is_its_tenant_type_and_tags() {
        let base = series_hash(&point("a", "cpu", &[("host", "x")]));
        assert_eq!(base, series_hash(&point("a", "cpu", &[("host", "x")])));
        for other in [
            point("b", "cpu", &[("host", "x")]),
            point("a", "mem", &[("host", "x")]),
            point("a", "cpu", &[("host", "y")]),
            point("a", "cpu", &[]),
        ] {
            assert_ne!(base, series_hash(&other));
        }
    }

    #[test]
    fn remembered_ids_are_bounded_and_recently_used_ones_survive() {
        let ids = SeriesIds::default();
        let hash = |n: usize| {
            let mut hash = [0u8; 16];
            hash[..8].copy_from_slice(&(n as u64).to_le_bytes());
            hash
        };
        ids.remember(hash(0), 1);
        for n in 1..MAX_REMEMBERED_SERIES {
            ids.remember(hash(n), n as i64 + 1);
        }
        // The generation is full: the next one starts, and 0, used again, moves into it.
        ids.remember(hash(MAX_REMEMBERED_SERIES), 0);
        assert_eq!(ids.get(&hash(0)), Some(1));
        for n in MAX_REMEMBERED_SERIES + 1..2 * MAX_REMEMBERED_SERIES {
            ids.remember(hash(n), 0);
        }
        assert_eq!(
            ids.get(&hash(0)),
            Some(1),
            "used in the previous generation"
        );
        assert_eq!(ids.get(&hash(1)), None, "two generations ago");
        assert!(ids.len() <= 2 * MAX_REMEMBERED_SERIES);
    }
}
