// Compiles contracts/TestUSDC.sol offline with solc-js and writes kiota/dev/usdc_token.json,
// the committed artifact that tests and `kiota dev` load (so they never need a compiler).
//
// solc is deliberately not a dependency of the repo: install it once somewhere else and
// point SOLC_DIR at that directory, e.g.
//   mkdir -p /tmp/solcjs && (cd /tmp/solcjs && npm install solc@0.8.28)
//   SOLC_DIR=/tmp/solcjs node contracts/compile.mjs
// We use the standard-JSON interface because the solc-js CLI cannot set the EVM version
// and does not print runtime (deployed) bytecode.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const SOLC_VERSION = "0.8.28"; // pinned so the committed artifact is reproducible
const EVM_VERSION = "cancun"; // anvil 1.x runs cancun or later
const CONTRACT = "TestUSDC";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const sourcePath = join(repo, "contracts", `${CONTRACT}.sol`);
const outPath = join(repo, "kiota", "dev", "usdc_token.json");

const solcDir = resolve(process.env.SOLC_DIR ?? process.cwd());
const solc = createRequire(join(solcDir, "package.json"))("solc");
if (!solc.version().startsWith(`${SOLC_VERSION}+`)) {
  throw new Error(`expected solc ${SOLC_VERSION}, found ${solc.version()} in ${solcDir}`);
}

const source = readFileSync(sourcePath, "utf8");
const input = {
  language: "Solidity",
  sources: { [`${CONTRACT}.sol`]: { content: source } },
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    // No IPFS hash of the metadata in the bytecode: it would change with unrelated details.
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { [CONTRACT]: ["abi", "evm.deployedBytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

const contract = output.contracts[`${CONTRACT}.sol`][CONTRACT];
const artifact = {
  contract: CONTRACT,
  compiler: solc.version(),
  evmVersion: EVM_VERSION,
  source_sha256: createHash("sha256").update(source).digest("hex"),
  abi: contract.abi,
  deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
};
writeFileSync(outPath, `${JSON.stringify(artifact, null, 2)}\n`);
console.log(`wrote ${outPath} (${(artifact.deployedBytecode.length - 2) / 2} bytes of runtime code)`);
