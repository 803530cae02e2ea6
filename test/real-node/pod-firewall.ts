import { run } from "./host.js";

/** What kube-router's NetworkPolicy firewall holds for one pod, read back from iptables and ipset. */
export interface PodFirewall {
  /** The pod's chain (`KUBE-POD-FW-…`), which every packet from or to the pod passes. */
  readonly chain: string;
  /** The chain REJECTs every packet no policy marked as allowed. */
  readonly rejectsUnmarked: boolean;
  /** The policy chains (`KUBE-NWPLCY-…`) the pod's chain runs through. */
  readonly policies: readonly string[];
  /**
   * The ipsets those policies match destinations against (allowed when in the set), each with its members as `ipset`
   * holds them: `0.0.0.0/1`, `198.51.100.0/24 nomatch` (an ipBlock's `except`), …; /32 written as the bare address.
   */
  readonly destinationSets: ReadonlyMap<string, readonly string[]>;
}

/**
 * Reads back the firewall kube-router built for a pod (kube-router v2: pkg/controllers/netpol): the pod's chain, found
 * by the comment of its REJECT rule, which names the pod; the policy chains it jumps to; the ipsets of their egress
 * rules (`-m set --match-set <set> dst`). An ipBlock with `except` is one `hash:net` set whose excepted ranges are
 * `nomatch` members. Undefined while kube-router has not built the pod's chain yet.
 */
export async function podFirewall(namespace: string, pod: string): Promise<PodFirewall | undefined> {
  const rules = (await run("iptables-save", ["-t", "filter"])).split("\n").filter((l) => l.startsWith("-A "));
  const named = `POD name:${pod} namespace: ${namespace}"`;
  const chain = rules
    .map((r) => (r.includes(`rule to REJECT traffic destined for ${named}`) ? /^-A (\S+)/.exec(r)?.[1] : undefined))
    .find((c) => c !== undefined);
  if (chain === undefined) return undefined;
  const own = rules.filter((r) => r.startsWith(`-A ${chain} `));
  const rejectsUnmarked = own.some((r) => r.includes(named) && / -m mark ! --mark 0x10000\/0x10000 -j REJECT/.test(r));
  const policies = own.map((r) => / -j (KUBE-NWPLCY-\S+)/.exec(r)?.[1]).filter((p) => p !== undefined);
  const sets = new Set(
    rules
      .filter((r) => policies.some((p) => r.startsWith(`-A ${p} `)))
      .flatMap((r) => [...r.matchAll(/--match-set (\S+) dst/g)].map((m) => m[1] ?? "")),
  );
  const destinationSets = new Map<string, string[]>();
  for (const set of sets) destinationSets.set(set, await ipsetMembers(set));
  return { chain, rejectsUnmarked, policies, destinationSets };
}

/** The members of an ipset, from `ipset save`: the address or range, then `nomatch` for an excepted one. */
export async function ipsetMembers(set: string): Promise<string[]> {
  return (await run("ipset", ["save", set]))
    .split("\n")
    .filter((l) => l.startsWith(`add ${set} `))
    .map((l) => {
      const [member = "", ...options] = l.slice(`add ${set} `.length).trim().split(/\s+/);
      return `${member.replace(/\/32$/, "")}${options.includes("nomatch") ? " nomatch" : ""}`;
    });
}

/** Whether the kernel finds an address in an ipset (`ipset test`: a lookup, nothing is sent). */
export async function ipsetMatches(set: string, address: string): Promise<boolean> {
  return run("ipset", ["test", set, address]).then(
    () => true,
    () => false,
  );
}
