import { expect } from "chai";
import { ConfigError, parseConfig } from "./config.js";

describe("parseConfig", () => {
  it("defaults the log level to info", () => {
    expect(parseConfig([], {})).to.deep.equal({ logLevel: "info" });
  });
  it("reads --log-level in both flag forms and from the environment", () => {
    expect(parseConfig(["--log-level=debug"], {}).logLevel).to.equal("debug");
    expect(parseConfig(["--log-level", "warn"], {}).logLevel).to.equal("warn");
    expect(parseConfig([], { BK_OPERATOR_LOG_LEVEL: "error" }).logLevel).to.equal("error");
  });
  it("names the fix for a bad level, an unknown flag and a missing value", () => {
    expect(() => parseConfig(["--log-level=loud"], {})).to.throw(ConfigError, /must be one of error, warn, info, debug/);
    expect(() => parseConfig(["--verbose=1"], {})).to.throw(ConfigError, /unknown flag --verbose; known flags: --log-level/);
    expect(() => parseConfig(["--log-level"], {})).to.throw(ConfigError, /needs a value/);
    expect(() => parseConfig(["stray"], {})).to.throw(ConfigError, /unexpected argument "stray"/);
  });
});
