//! The harness's own servers: they start, stop and come back on the same port, which the
//! fault tests rely on.

use std::time::Duration;

use tenant_router::testing::LocalRedis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").await.is_ok()
        && tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut reply))
            .await
            .is_ok_and(|r| r.is_ok())
        && &reply == b"+PONG\r\n"
}

#[tokio::test]
async fn redis_stops_and_restarts_on_its_port() {
    let mut redis = LocalRedis::start_ephemeral().unwrap();
    let port = redis.port();
    assert!(redis.url().contains(&port.to_string()));
    assert!(ping(port).await);
    redis.stop();
    assert!(!ping(port).await, "a stopped Redis must not answer");
    redis.start().unwrap();
    assert!(ping(port).await);
}
