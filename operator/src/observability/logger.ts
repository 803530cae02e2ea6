import winston from "winston";

/** Log levels the operator accepts on `--log-level`, most to least severe. */
export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Structured context keys used across the operator's log lines. */
export interface LogContext {
  queue?: string;
  job?: string;
  pod?: string;
  namespace?: string;
  [key: string]: unknown;
}

export type Logger = winston.Logger;

/**
 * Creates the operator's JSON logger: one line per entry with `time` (RFC 3339, UTC, milliseconds), `level`,
 * `message` and the context keys (docs/observability.md lists them). The logger is created once in `main.ts` and
 * passed down; nothing reaches for a global. `now` is the clock the time is read from.
 *
 * One time field, `time`: it is what Go's log/slog, Fluent Bit's and Fluentd's JSON parsers, Vector and Google Cloud
 * Logging read without configuration, and what this project documented from the start. winston's own `timestamp`
 * format is not used: with an alias it writes the same instant twice.
 */
export function createLogger(
  level: LogLevel,
  stream: NodeJS.WritableStream = process.stdout,
  now: () => Date = () => new Date(),
): Logger {
  const time = winston.format((info) => {
    info.time = now().toISOString();
    return info;
  });
  return winston.createLogger({
    level,
    levels: { error: 0, warn: 1, info: 2, debug: 3 },
    format: winston.format.combine(time(), winston.format.json()),
    transports: [new winston.transports.Stream({ stream })],
  });
}
