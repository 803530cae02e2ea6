import { AssumeRoleWithWebIdentityCommand, STSClient } from "@aws-sdk/client-sts";

/** The session name the preflight's sessions carry in CloudTrail. */
export const PREFLIGHT_SESSION_NAME = "buildkite-operator-preflight";
/** The shortest session STS grants: the credentials are thrown away at once. */
const SESSION_SECONDS = 900;

export interface StsCallerSettings {
  /** An STS endpoint URL instead of the regional AWS one (a VPC endpoint, or a fake in tests). */
  stsEndpoint?: string;
  /** Connection and request timeout of one call. */
  timeoutMs: number;
}

/** What the preflight keeps of a successful call: never the credentials themselves. */
export interface AssumedRole {
  assumedRoleArn: string;
  expiration: Date | undefined;
}

/**
 * Calls STS `AssumeRoleWithWebIdentity`, one SDK client per region. The call is unsigned (the web identity token is
 * the proof), so the clients are given a credentials provider that refuses: nothing ever looks for AWS credentials in
 * the environment, shared files or the instance metadata service on the operator's behalf. Retries are left to the
 * preflight's own backoff (`maxAttempts: 1`), so a failing STS costs one request per attempt.
 */
export class StsCaller {
  private readonly clients = new Map<string, STSClient>();

  constructor(private readonly settings: StsCallerSettings) {}

  /** The endpoint a region's calls go to, for messages. */
  endpointFor(region: string, queueEndpoint?: string): string {
    return queueEndpoint ?? this.settings.stsEndpoint ?? `https://sts.${region}.amazonaws.com`;
  }

  /** Assumes `roleArn` with `token`; throws the SDK's error (see `classifyStsError`). */
  async assume(region: string, roleArn: string, token: string, queueEndpoint?: string): Promise<AssumedRole> {
    const out = await this.client(region, queueEndpoint).send(
      new AssumeRoleWithWebIdentityCommand({
        RoleArn: roleArn,
        RoleSessionName: PREFLIGHT_SESSION_NAME,
        WebIdentityToken: token,
        DurationSeconds: SESSION_SECONDS,
      }),
    );
    return { assumedRoleArn: out.AssumedRoleUser?.Arn ?? roleArn, expiration: out.Credentials?.Expiration };
  }

  destroy(): void {
    for (const client of this.clients.values()) client.destroy();
    this.clients.clear();
  }

  private client(region: string, queueEndpoint: string | undefined): STSClient {
    const key = `${region}|${queueEndpoint ?? ""}`;
    let client = this.clients.get(key);
    if (!client) {
      const { timeoutMs } = this.settings;
      const stsEndpoint = queueEndpoint ?? this.settings.stsEndpoint;
      client = new STSClient({
        region,
        ...(stsEndpoint !== undefined ? { endpoint: stsEndpoint } : {}),
        maxAttempts: 1,
        credentials: () =>
          Promise.reject(new Error("AssumeRoleWithWebIdentity is unsigned; the preflight uses no AWS credentials")),
        requestHandler: { connectionTimeout: timeoutMs, requestTimeout: timeoutMs, throwOnRequestTimeout: true },
      });
      this.clients.set(key, client);
    }
    return client;
  }
}
