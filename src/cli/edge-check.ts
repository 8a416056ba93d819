import { resolve } from 'node:path';
import type { Command } from 'commander';
import { runEdgeChecks, type CheckResult, type CheckStatus } from '../edge/check/index.ts';
import { readAppliedConfig } from '../edge/local.ts';
import { UserError } from '../util/errors.ts';
import { dataDirOfConfigFile } from './edge-data-dir.ts';
import { action } from './run.ts';

const LABEL: Record<CheckStatus, string> = { pass: 'pass', warning: 'warning', error: 'error', skipped: 'skipped' };
const WIDTH = 9;

function indent(text: string, pad: string): string {
  return text
    .split('\n')
    .map((line) => `${pad}${line}`)
    .join('\n');
}

/**
 * The check results as terminal lines: one per check (pass / warning / error), what was found
 * for the ones that did not pass, and what to do. `verbose` adds what a passing check saw and
 * lists skipped checks with their reason.
 */
export function formatCheckResults(results: readonly CheckResult[], verbose = false): string[] {
  const lines: string[] = [];
  const pad = ' '.repeat(WIDTH);
  for (const r of results) {
    if (r.status === 'skipped' && !verbose) continue;
    const showDetail = r.status !== 'pass' || verbose;
    const [first, ...more] = r.detail.split('\n');
    lines.push(`${LABEL[r.status].padEnd(WIDTH)}${r.title}${showDetail && first ? `: ${first}` : ''}`);
    if (showDetail && more.length > 0) lines.push(indent(more.join('\n'), `${pad}  `));
    if ((r.status === 'error' || r.status === 'warning') && r.fix) {
      const [fixFirst, ...fixMore] = r.fix.split('\n');
      lines.push(`${pad}what to do: ${fixFirst}`);
      if (fixMore.length > 0) lines.push(indent(fixMore.join('\n'), `${pad}            `));
    }
  }
  const count = (s: CheckStatus) => results.filter((r) => r.status === s).length;
  const skipped = count('skipped');
  lines.push('');
  lines.push(
    `${count('pass')} passed, ${count('warning')} warning(s), ${count('error')} error(s)${skipped ? `, ${skipped} skipped${verbose ? '' : ' (--verbose lists them)'}` : ''}`,
  );
  return lines;
}

interface CheckFlags {
  config?: string;
  data?: string;
  verbose?: boolean;
  json?: boolean;
}

/** `strata edge check`, added to the `edge` command group. */
export function registerEdgeCheckCommand(edge: Command | undefined): void {
  if (!edge) throw new Error('the `edge` command group must be registered before `edge check`');
  edge
    .command('check')
    .description(
      "diagnose a gateway's configuration, certificates, clock, storage and connectivity to its upstream (parent or hub); exits non-zero when any check fails",
    )
    .option('--config <file>', 'the config.toml (default: the one `strata edge config apply` recorded in --data)')
    .option(
      '--data <dir>',
      'data directory of the gateway (default: [strata] data_dir of the config, else ./.strata/edge-{deviceId})',
    )
    .option('--verbose', 'also say what passing checks saw, and list skipped checks')
    .option('--json', 'print the results as a JSON array of {id, title, status, detail, fix}')
    .addHelpText(
      'after',
      '\nThe upstream is checked on ports 8883, 5671 and 443: TCP, then a TLS handshake whose certificate must chain\nto trust_bundle_cert and name parent_hostname (or the hub host name); 2 s per connection.',
    )
    .action(
      action(async (flags: CheckFlags) => {
        let configPath = flags.config;
        if (!configPath && flags.data) configPath = readAppliedConfig(resolve(flags.data))?.configPath;
        if (!configPath) throw new UserError('no configuration given', 'Pass --config config.toml');
        // A config that names its data directory is checked against that one (a bad value is the config check's to report).
        let dataDir = flags.data;
        if (dataDir === undefined) {
          try {
            dataDir = dataDirOfConfigFile(configPath);
          } catch {
            dataDir = undefined;
          }
        }
        const results = await runEdgeChecks({ configPath, dataDir });
        if (flags.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
        else process.stdout.write(`${formatCheckResults(results, flags.verbose).join('\n')}\n`);
        if (results.some((r) => r.status === 'error')) process.exitCode = 1;
      }),
    );
}
