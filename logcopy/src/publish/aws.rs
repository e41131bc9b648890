//! The AWS SDK's chain checked at start, for the commands that use S3 and DynamoDB: a missing region, or no
//! credentials provider in the chain, is a configuration error (exit 2, one line that says what to set) instead of
//! a raw SDK error after multi-line warnings, or a run that exits 0 with every upload failed. A provider that is
//! configured but does not answer (STS or the instance metadata down) is a transient fault: a warning, and the SDK
//! tries again at every request.

use crate::config::{ConfigError, bad};
use crate::logging::one_line;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::DisplayErrorContext;
use std::time::Duration;

/// The setting named when the chain has no region.
pub const REGION: &str = "AWS_REGION";
/// The setting named when the chain has no credentials.
pub const CREDENTIALS: &str = "AWS credentials (IRSA web identity, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)";

/// How long the credentials provider may take to answer at start.
pub const CHECK_WAIT: Duration = Duration::from_secs(10);

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A region and credentials.
    Ready,
    /// A provider that is configured but failed or did not answer: a warning (one line), not an error.
    Transient(String),
}

/// Checks `sdk`'s region and its credentials provider (waiting at most `wait` for it): every configuration problem
/// at once, or whether the provider answered.
pub async fn check(sdk: &aws_config::SdkConfig, wait: Duration) -> Result<Checked, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if sdk.region().is_none() {
        errors.push(bad(
            REGION,
            "no region in the AWS SDK chain (environment, profile, instance metadata): set AWS_REGION (e.g. \
             us-west-2), or AWS_PROFILE with a region in the profile",
        ));
    }
    let answer = match sdk.credentials_provider() {
        Some(p) => tokio::time::timeout(wait, p.provide_credentials()).await,
        None => Ok(Err(CredentialsError::not_loaded("no credentials provider"))),
    };
    let checked = match answer {
        Ok(Ok(_)) => Checked::Ready,
        Ok(Err(CredentialsError::CredentialsNotLoaded(_))) => {
            errors.push(bad(
                CREDENTIALS,
                "no provider in the AWS SDK chain has credentials (environment, profile files, web identity, ECS, \
                 instance metadata): on EKS give the Job's service account an IAM role (IRSA); elsewhere set \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            ));
            Checked::Ready
        }
        Ok(Err(e @ CredentialsError::InvalidConfiguration(_))) => {
            errors.push(bad(
                CREDENTIALS,
                format!("invalid configuration: {}", one_line(&DisplayErrorContext(e).to_string())),
            ));
            Checked::Ready
        }
        Ok(Err(e)) => Checked::Transient(format!(
            "AWS credentials: the provider failed ({}); going on: every S3 and DynamoDB request asks it again",
            one_line(&DisplayErrorContext(e).to_string())
        )),
        Err(_) => Checked::Transient(format!(
            "AWS credentials: the provider did not answer within {wait:?}; going on: every S3 and DynamoDB request \
             asks it again"
        )),
    };
    if errors.is_empty() { Ok(checked) } else { Err(errors) }
}
