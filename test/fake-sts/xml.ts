import type { StsError } from "./errors.js";

/** The XML namespace of every STS 2011-06-15 response. */
export const STS_XML_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/";

/** What a successful AssumeRoleWithWebIdentity returns. */
export interface AssumeRoleResult {
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken: string; expiration: Date };
  /** The token's `sub`. */
  subject: string;
  assumedRoleArn: string;
  assumedRoleId: string;
  /** The token's audience that matched. */
  audience: string;
  /** The IAM OIDC provider that vouched for the token (its ARN). */
  provider: string;
}

/** Escapes character data (element text, never attributes: quotes stay as they are, as in AWS's messages). */
export function escapeXml(text: string): string {
  return text.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c] ?? c);
}

/** ISO 8601 without milliseconds, as STS writes timestamps (`2026-01-01T01:00:00Z`). */
export const awsTimestamp = (at: Date): string => at.toISOString().replace(/\.\d{3}Z$/, "Z");

/** The body of a successful AssumeRoleWithWebIdentity, element for element as AWS sends it. */
export function assumeRoleResponseXml(result: AssumeRoleResult, requestId: string): string {
  const c = result.credentials;
  return `<AssumeRoleWithWebIdentityResponse xmlns="${STS_XML_NAMESPACE}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>${escapeXml(result.subject)}</SubjectFromWebIdentityToken>
    <Audience>${escapeXml(result.audience)}</Audience>
    <AssumedRoleUser>
      <Arn>${escapeXml(result.assumedRoleArn)}</Arn>
      <AssumedRoleId>${escapeXml(result.assumedRoleId)}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>${escapeXml(c.sessionToken)}</SessionToken>
      <SecretAccessKey>${escapeXml(c.secretAccessKey)}</SecretAccessKey>
      <Expiration>${awsTimestamp(c.expiration)}</Expiration>
      <AccessKeyId>${escapeXml(c.accessKeyId)}</AccessKeyId>
    </Credentials>
    <Provider>${escapeXml(result.provider)}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>${escapeXml(requestId)}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
`;
}

/** The Query API's error body: `ErrorResponse/Error{Type, Code, Message}` and the request id beside `Error`. */
export function errorResponseXml(err: Pick<StsError, "type" | "code" | "message">, requestId: string): string {
  return `<ErrorResponse xmlns="${STS_XML_NAMESPACE}">
  <Error>
    <Type>${err.type}</Type>
    <Code>${escapeXml(err.code)}</Code>
    <Message>${escapeXml(err.message)}</Message>
  </Error>
  <RequestId>${escapeXml(requestId)}</RequestId>
</ErrorResponse>
`;
}
