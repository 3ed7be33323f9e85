//! [`Timestamp`]: a `timestamptz` read and written as JSON without a calendar library on the
//! hot path.
//!
//! A page of notes carries two timestamps per note. Through chrono, each one is decoded via
//! `DateTime<FixedOffset>` and `NaiveDateTime` arithmetic and written through `fmt` into a
//! fresh `String`: a fifth of the reference app's own CPU on `GET /api/notes`. PostgreSQL
//! sends a `timestamptz` in binary as microseconds since 2000-01-01 UTC; this type keeps that
//! integer and writes RFC 3339 from it into a stack buffer, the exact text chrono's
//! `Serialize` writes (a test holds the two equal).

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type};

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01 (UTC).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A point in time, to the microsecond, as PostgreSQL stores a `timestamptz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Microseconds since 1970-01-01 UTC.
    unix_micros: i64,
}

impl Timestamp {
    /// The instant `micros` microseconds after 1970-01-01 UTC.
    pub const fn from_unix_micros(micros: i64) -> Self {
        Self {
            unix_micros: micros,
        }
    }

    /// The same instant as chrono's type.
    pub fn to_chrono(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.unix_micros)
    }

    /// Appends the JSON string [`Serialize`] writes: RFC 3339 needs no escaping, so it goes
    /// in as it is written, without a serializer or a UTF-8 check in between.
    pub fn write_json(self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 27];
        match self.write_rfc3339(&mut buf) {
            Some(len) => {
                out.reserve(len + 2);
                out.push(b'"');
                out.extend_from_slice(&buf[..len]);
                out.push(b'"');
            }
            None => serde_json::to_writer(out, &self).expect("JSON into a Vec"),
        }
    }

    /// RFC 3339 in UTC with `Z`, and 0, 3 or 6 fraction digits: as few as the value needs.
    /// `None` outside years 0000 to 9999, which RFC 3339 cannot write in four digits.
    fn write_rfc3339(self, out: &mut [u8; 27]) -> Option<usize> {
        let days = self.unix_micros.div_euclid(MICROS_PER_DAY);
        let in_day = self.unix_micros.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        // In range now: small enough for u32 arithmetic, and two digits at a time.
        let (year, secs, micros) = (
            year as u32,
            (in_day / 1_000_000) as u32,
            (in_day % 1_000_000) as u32,
        );
        put2(out, 0, year / 100);
        put2(out, 2, year % 100);
        put2(out, 5, month as u32);
        put2(out, 8, day as u32);
        put2(out, 11, secs / 3600);
        put2(out, 14, secs / 60 % 60);
        put2(out, 17, secs % 60);
        out[4] = b'-';
        out[7] = b'-';
        out[10] = b'T';
        out[13] = b':';
        out[16] = b':';
        let mut len = 19;
        if micros != 0 {
            out[19] = b'.';
            let millis = micros / 1000;
            out[20] = b'0' + (millis / 100) as u8;
            put2(out, 21, millis % 100);
            len = 23;
            if micros % 1000 != 0 {
                out[23] = b'0' + (micros % 1000 / 100) as u8;
                put2(out, 24, micros % 100);
                len = 26;
            }
        }
        out[len] = b'Z';
        Some(len + 1)
    }
}

/// "00" to "99", for writing two digits at once.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `value` (below 100) as two decimal digits at `out[at..]`.
fn put2(out: &mut [u8; 27], at: usize, value: u32) {
    let i = value as usize * 2;
    out[at..at + 2].copy_from_slice(&DIGIT_PAIRS[i..i + 2]);
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`): (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        match self.write_rfc3339(&mut buf) {
            // ASCII digits and separators only.
            Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).expect("ASCII")),
            // Years chrono writes with a sign and more digits, and `infinity`: let it.
            None => match self.to_chrono() {
                Some(t) => t.serialize(s),
                None => s.serialize_str(if self.unix_micros > 0 {
                    "infinity"
                } else {
                    "-infinity"
                }),
            },
        }
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value
                    .as_bytes()?
                    .try_into()
                    .map_err(|_| "a binary timestamptz is 8 bytes")?;
                let pg_micros = i64::from_be_bytes(bytes);
                let unix_micros = pg_micros
                    .checked_add(PG_EPOCH_UNIX_MICROS)
                    // PostgreSQL's `infinity` is i64::MAX: keep it at the end of time.
                    .unwrap_or(pg_micros);
                Ok(Timestamp { unix_micros })
            }
            PgValueFormat::Text => {
                let t = <DateTime<Utc> as Decode<Postgres>>::decode(value)?;
                Ok(Timestamp {
                    unix_micros: t.timestamp_micros(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_json(micros: i64) -> serde_json::Value {
        serde_json::to_value(DateTime::from_timestamp_micros(micros).unwrap()).unwrap()
    }

    /// Every precision, both sides of 1970 and 2000, leap days, the ends of days, months
    /// and years, and a spread of instants from year 0 to 9999: written as chrono writes them.
    #[test]
    fn writes_what_chrono_writes() {
        let mut cases = vec![
            0,
            1,
            -1,
            999,
            1_000,
            120_000,
            123_456,
            999_999,
            PG_EPOCH_UNIX_MICROS,
            PG_EPOCH_UNIX_MICROS - 1,
            951_782_400_000_000,     // 2000-02-29
            4_107_542_399_999_999,   // 2100-02-28T23:59:59.999999
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
            -62_167_219_200_000_000, // 0000-01-01
            1_764_547_200_123_000,
        ];
        // A deterministic walk over the whole range, with ragged fractions.
        let (lo, hi) = (-62_167_219_200_000_000i64, 253_402_300_799_999_999i64);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let span = (hi - lo) as u64;
            let mut micros = lo + (x % span) as i64;
            match x % 3 {
                0 => micros -= micros.rem_euclid(1_000_000),
                1 => micros -= micros.rem_euclid(1_000),
                _ => {}
            }
            cases.push(micros);
        }
        for micros in cases {
            let ours = serde_json::to_value(Timestamp {
                unix_micros: micros,
            })
            .unwrap();
            assert_eq!(ours, chrono_json(micros), "{micros}");
            assert_eq!(written(micros), ours, "{micros}");
        }
    }

    /// What `write_json` appends, after text already there.
    fn written(micros: i64) -> serde_json::Value {
        let mut out = b"[1,".to_vec();
        Timestamp::from_unix_micros(micros).write_json(&mut out);
        out.push(b']');
        let mut list: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
        list.pop().unwrap()
    }

    #[test]
    fn years_past_9999_are_left_to_chrono() {
        let micros = 253_402_300_800_000_000; // 10000-01-01
        let ours = serde_json::to_value(Timestamp {
            unix_micros: micros,
        })
        .unwrap();
        assert_eq!(ours, chrono_json(micros));
        assert_eq!(written(micros), ours);
        assert_eq!(written(i64::MAX), "infinity");
        assert_eq!(written(i64::MIN), "-infinity");
    }
}
