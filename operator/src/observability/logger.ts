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
 * Creates the operator's JSON logger. One line per entry with `time`, `level`, `message` and the context keys.
 * The logger is created once in `main.ts` and passed down; nothing reaches for a global.
 */
export function createLogger(level: LogLevel, stream: NodeJS.WritableStream = process.stdout): Logger {
  return winston.createLogger({
    level,
    levels: { error: 0, warn: 1, info: 2, debug: 3 },
    format: winston.format.combine(winston.format.timestamp({ alias: "time" }), winston.format.json()),
    transports: [new winston.transports.Stream({ stream })],
  });
}
