import { expect } from "chai";
import { cpuMillis, formatCpu, formatMemory, memoryBytes } from "./quantity.js";

describe("quantities", () => {
  it("reads CPU and memory as Kubernetes writes them, and refuses what is not a quantity", () => {
    expect([cpuMillis("500m"), cpuMillis("2"), cpuMillis("1.5"), cpuMillis(3)]).to.deep.equal([500, 2000, 1500, 3000]);
    expect([memoryBytes("512Mi"), memoryBytes("4Gi"), memoryBytes("1G"), memoryBytes("1k")]).to.deep.equal([
      512 * 2 ** 20,
      4 * 2 ** 30,
      1e9,
      1000,
    ]);
    expect([cpuMillis("lots"), memoryBytes("4 GB"), memoryBytes("-1Gi")]).to.deep.equal([
      undefined,
      undefined,
      undefined,
    ]);
  });
  it("writes them back exactly", () => {
    expect([
      formatCpu(2000),
      formatCpu(1750),
      formatMemory(2 ** 30),
      formatMemory(3 * 2 ** 20),
      formatMemory(1000),
    ]).to.deep.equal(["2", "1750m", "1Gi", "3Mi", "1000"]);
  });
});
