//! The disaggregated stack with TLS everywhere, as separate `lcserve` processes sharing one
//! certificate from a test CA: the router's public front serves clients that trust the CA and
//! no others; the internal services (mTLS) refuse a caller without a client certificate.

mod support;

use std::sync::Arc;

use lcserve_proto::v1::decode_client::DecodeClient;
use lcserve_proto::v1::generation_client::GenerationClient;
use lcserve_svc_kit::tls::test_pki::TestCa;
use lcserve_svc_kit::{Tls, TlsArgs};
use support::{Stack, connect, generate};

fn load(args: &TlsArgs) -> Arc<Tls> {
    Tls::load(args).expect("readable certificates").expect("TLS flags given")
}

fn flags(args: &TlsArgs) -> Vec<String> {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().expect("path").display().to_string();
    [
        "--tls-cert".to_owned(),
        path(&args.tls_cert),
        "--tls-key".into(),
        path(&args.tls_key),
        "--tls-ca".into(),
        path(&args.tls_ca),
    ]
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_front_and_mtls_between_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "cluster");
    let stack = Stack::start("https", &flags(&ca.issue("service")), &[]);

    // A client that trusts the CA (and has no certificate: the public front asks for none)
    // generates through router, prefill, kvstore and decode, every hop over TLS.
    let trusting = load(&TlsArgs { tls_ca: Some(ca.ca_path()), ..TlsArgs::default() });
    let mut client = stack.client(Some(&trusting)).await;
    assert_eq!(generate(&mut client, 4).await.expect("generate over TLS"), 4);

    // No CA, or another CA: no connection.
    let plain = stack.grpc_url.replacen("https://", "http://", 1);
    let refused = match connect(&plain, None).await {
        Ok(channel) => generate(&mut GenerationClient::new(channel), 1).await.map(drop).map_err(|e| e.to_string()),
        Err(error) => Err(error),
    };
    assert!(refused.is_err(), "plain HTTP/2 to the TLS front must fail");
    let stranger = TestCa::new(dir.path(), "stranger");
    let foreign = load(&TlsArgs { tls_ca: Some(stranger.ca_path()), ..TlsArgs::default() });
    assert!(connect(&stack.grpc_url, Some(&foreign)).await.is_err(), "a client trusting another CA must not connect");

    // The decode worker under mTLS: a caller with the CA but no certificate is refused, one
    // with a certificate from the CA is served.
    let anonymous = connect(&stack.decode_url, Some(&trusting)).await;
    let refused = match anonymous {
        Ok(channel) => {
            DecodeClient::new(channel).get_model_info(lcserve_proto::v1::GetModelInfoRequest {}).await.map(drop)
        }
        Err(error) => Err(tonic::Status::unavailable(error)),
    };
    assert!(refused.is_err(), "mTLS must refuse a caller without a client certificate");
    let member = load(&ca.issue("member"));
    let channel = connect(&stack.decode_url, Some(&member)).await.expect("a certified caller connects");
    let info = DecodeClient::new(channel).get_model_info(lcserve_proto::v1::GetModelInfoRequest {}).await;
    assert!(info.is_ok(), "{info:?}");
}
