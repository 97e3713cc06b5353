//! The server on a Unix domain socket (`--listen unix:///path`): the Rust
//! client dials it, gets the same bytes as over TCP, and the socket file
//! goes away with the server.

use pixelfeed_client::{Client, TensorBatch};
use pixelfeed_server::{serve_with_shutdown, ListenAddr, Listener, ServerConfig};
use pixelfeed_testkit::tempdir;

use crate::{bundled_images, start, SMALL};

/// The rows' tensor bytes (valid rows) and errors, in order.
fn rows(batches: &[arrow_array::RecordBatch]) -> Vec<(Option<Vec<u8>>, Option<String>)> {
    let mut out = Vec::new();
    for batch in batches {
        let tensors = TensorBatch::try_from(batch).unwrap();
        for i in 0..tensors.num_rows() {
            out.push((
                tensors
                    .is_valid(i)
                    .then(|| tensors.row_u8(i).unwrap().to_vec()),
                tensors.error(i).map(str::to_string),
            ));
        }
    }
    out
}

#[tokio::test]
async fn the_same_rows_over_a_unix_socket_as_over_tcp() {
    let dir = tempdir("unix-socket");
    let path = dir.join("pixelfeed.sock");
    let addr: ListenAddr = format!("unix://{}", path.display()).parse().unwrap();
    let listener = Listener::bind(&addr).await.unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_shutdown(
        ServerConfig::default(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));

    let mut images = bundled_images();
    images.push(b"not an image".to_vec());
    let over_unix = Client::connect(&format!("grpc+unix://{}", path.display()))
        .await
        .expect("connect over the socket")
        .preprocess(&images, SMALL, 5)
        .await
        .unwrap();
    let (_tcp_server, tcp) = start(ServerConfig::default(), Default::default()).await;
    let over_tcp = tcp.preprocess(&images, SMALL, 5).await.unwrap();

    let (unix_rows, tcp_rows) = (rows(&over_unix), rows(&over_tcp));
    assert_eq!(unix_rows.len(), images.len());
    assert_eq!(unix_rows, tcp_rows);
    assert!(unix_rows.last().unwrap().1.is_some(), "the bad row's error");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket file outlived the server");
    std::fs::remove_dir_all(&dir).unwrap();
}
