//! Host resolution cost at 10, 10,000 and 100,000 tenants: `Host` normalisation plus the
//! registry lookup, the whole of what the router adds before a handler runs.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tenant_router::host;
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::tenant::{DatabaseUrl, PoolSettings, Tenant, TenantHost, TenantId, TenantState};

fn registry(n: usize) -> Registry {
    let registry = Registry::new(RegistryOptions {
        base_domain: Some("test.com".into()),
        ..Default::default()
    });
    let tenants = (0..n)
        .map(|i| Tenant {
            id: TenantId::parse(&format!("tenant-{i}")).unwrap(),
            hosts: vec![TenantHost::parse(&format!("tenant-{i}.example.org")).unwrap()],
            database: DatabaseUrl::parse(&format!("postgres://app@db/tenant_{i}")).unwrap(),
            pool: PoolSettings::default(),
            state: TenantState::Active,
            isolation: Default::default(),
            version: i as i64 + 1,
            incarnation: 1,
            rate_limit: None,
        })
        .collect();
    registry.replace_all(tenants, 0);
    registry
}

fn resolution(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve");
    for n in [10usize, 10_000, 100_000] {
        let r = registry(n);
        // Hosts spread over the whole registry, so the bench is not one hot cache line.
        // As browsers and curl send it: lower case, with the port.
        let hosts: Vec<String> = (0..1024)
            .map(|i| format!("tenant-{}.example.org:9500", (i * 7919) % n))
            .collect();
        let shouted: Vec<String> = (0..1024)
            .map(|i| format!("TENANT-{}.Example.org.", (i * 7919) % n))
            .collect();
        let canonical: Vec<String> = (0..1024)
            .map(|i| format!("tenant-{}.example.org", (i * 7919) % n))
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("lookup", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(r.resolve(black_box(&canonical[i])).is_some())
            })
        });
        group.bench_function(BenchmarkId::new("header_to_tenant", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let h = host::normalize(black_box(hosts[i].as_bytes())).unwrap();
                black_box(r.resolve(&h).is_some())
            })
        });
        group.bench_function(BenchmarkId::new("header_upper_case", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let h = host::normalize(black_box(shouted[i].as_bytes())).unwrap();
                black_box(r.resolve(&h).is_some())
            })
        });
        let wildcard: Vec<String> = (0..1024)
            .map(|i| format!("tenant-{}.test.com", (i * 7919) % n))
            .collect();
        group.bench_function(BenchmarkId::new("wildcard", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(r.resolve(black_box(&wildcard[i])).is_some())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, resolution);
criterion_main!(benches);
