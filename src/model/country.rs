//! Which country a phone number belongs to, for the numbers' country allow-lists
//! (`allowed_inbound_country_list`, `allowed_outbound_country_list`).
//!
//! A longest-prefix match of the number's leading digits on the ITU-T country calling
//! codes, plus the deciding digits where several countries share one code (the NANP area
//! codes, the Channel Islands in +44, ...). Facts from ITU-T E.164 assignments and
//! libphonenumber's metadata; no crate, and a lookup allocates nothing.

/// The longest prefix in [`PREFIXES`] (`3906698`, Vatican City inside +39).
const MAX_PREFIX: usize = 7;

/// Leading digits and the ISO 3166-1 alpha-2 code they belong to, sorted by digits (as
/// strings) for binary search; a test checks the order. A longer prefix overrides the
/// shorter one it starts with (`1` US, `1416` CA). Left out on purpose, so they map to
/// no country: the non-geographic codes (800, 808, 870, 878, 881, 882, 883, 888, 979),
/// unassigned codes, and Kosovo's 383 (XK is not an ISO code, so no allow-list can
/// name it anyway).
///
/// NANP (+1): Canada's area codes, its non-geographic 600, 622 and 633, and the
/// Caribbean and Pacific members; every other area code, toll-free 8XX included, is US.
#[rustfmt::skip]
static PREFIXES: &[(&str, &str)] = &[
    ("1", "US"), ("1204", "CA"), ("1226", "CA"), ("1236", "CA"), ("1242", "BS"), ("1246", "BB"),
    ("1249", "CA"), ("1250", "CA"), ("1257", "CA"), ("1263", "CA"), ("1264", "AI"), ("1268", "AG"),
    ("1284", "VG"), ("1289", "CA"), ("1306", "CA"), ("1340", "VI"), ("1343", "CA"), ("1345", "KY"),
    ("1354", "CA"), ("1365", "CA"), ("1367", "CA"), ("1368", "CA"), ("1382", "CA"), ("1387", "CA"),
    ("1403", "CA"), ("1416", "CA"), ("1418", "CA"), ("1428", "CA"), ("1431", "CA"), ("1437", "CA"),
    ("1438", "CA"), ("1441", "BM"), ("1450", "CA"), ("1460", "CA"), ("1468", "CA"), ("1473", "GD"),
    ("1474", "CA"), ("1506", "CA"), ("1514", "CA"), ("1519", "CA"), ("1548", "CA"), ("1579", "CA"),
    ("1581", "CA"), ("1584", "CA"), ("1587", "CA"), ("1600", "CA"), ("1604", "CA"), ("1613", "CA"),
    ("1622", "CA"), ("1633", "CA"), ("1639", "CA"), ("1647", "CA"), ("1649", "TC"), ("1658", "JM"),
    ("1664", "MS"), ("1670", "MP"), ("1671", "GU"), ("1672", "CA"), ("1683", "CA"), ("1684", "AS"),
    ("1705", "CA"), ("1709", "CA"), ("1721", "SX"), ("1742", "CA"), ("1753", "CA"), ("1758", "LC"),
    ("1767", "DM"), ("1778", "CA"), ("1780", "CA"), ("1782", "CA"), ("1784", "VC"), ("1787", "PR"),
    ("1807", "CA"), ("1809", "DO"), ("1819", "CA"), ("1825", "CA"), ("1829", "DO"), ("1849", "DO"),
    ("1867", "CA"), ("1868", "TT"), ("1869", "KN"), ("1873", "CA"), ("1876", "JM"), ("1879", "CA"),
    ("1902", "CA"), ("1905", "CA"), ("1939", "PR"), ("1942", "CA"),
    ("20", "EG"), ("211", "SS"), ("212", "MA"), ("213", "DZ"), ("216", "TN"), ("218", "LY"),
    ("220", "GM"), ("221", "SN"), ("222", "MR"), ("223", "ML"), ("224", "GN"), ("225", "CI"),
    ("226", "BF"), ("227", "NE"), ("228", "TG"), ("229", "BJ"), ("230", "MU"), ("231", "LR"),
    ("232", "SL"), ("233", "GH"), ("234", "NG"), ("235", "TD"), ("236", "CF"), ("237", "CM"),
    ("238", "CV"), ("239", "ST"), ("240", "GQ"), ("241", "GA"), ("242", "CG"), ("243", "CD"),
    ("244", "AO"), ("245", "GW"), ("246", "IO"), ("247", "SH"), ("248", "SC"), ("249", "SD"),
    ("250", "RW"), ("251", "ET"), ("252", "SO"), ("253", "DJ"), ("254", "KE"), ("255", "TZ"),
    ("256", "UG"), ("257", "BI"), ("258", "MZ"), ("260", "ZM"), ("261", "MG"), ("262", "RE"),
    ("262269", "YT"), ("262639", "YT"), ("263", "ZW"), ("264", "NA"), ("265", "MW"), ("266", "LS"),
    ("267", "BW"), ("268", "SZ"), ("269", "KM"), ("27", "ZA"), ("290", "SH"), ("291", "ER"),
    ("297", "AW"), ("298", "FO"), ("299", "GL"),
    ("30", "GR"), ("31", "NL"), ("32", "BE"), ("33", "FR"), ("34", "ES"), ("350", "GI"),
    ("351", "PT"), ("352", "LU"), ("353", "IE"), ("354", "IS"), ("355", "AL"), ("356", "MT"),
    ("357", "CY"), ("358", "FI"), ("35818", "AX"), ("359", "BG"), ("36", "HU"), ("370", "LT"),
    ("371", "LV"), ("372", "EE"), ("373", "MD"), ("374", "AM"), ("375", "BY"), ("376", "AD"),
    ("377", "MC"), ("378", "SM"), ("379", "VA"), ("380", "UA"), ("381", "RS"), ("382", "ME"),
    ("385", "HR"), ("386", "SI"), ("387", "BA"), ("389", "MK"), ("39", "IT"), ("3906698", "VA"),
    ("40", "RO"), ("41", "CH"), ("420", "CZ"), ("421", "SK"), ("423", "LI"), ("43", "AT"),
    ("44", "GB"), ("441481", "GG"), ("441534", "JE"), ("441624", "IM"), ("447509", "JE"), ("447524", "IM"),
    ("447624", "IM"), ("447700", "JE"), ("447781", "GG"), ("447797", "JE"), ("447829", "JE"), ("447839", "GG"),
    ("447911", "GG"), ("447924", "IM"), ("447937", "JE"), ("45", "DK"), ("46", "SE"), ("47", "NO"),
    ("4779", "SJ"), ("48", "PL"), ("49", "DE"),
    ("500", "FK"), ("501", "BZ"), ("502", "GT"), ("503", "SV"), ("504", "HN"), ("505", "NI"),
    ("506", "CR"), ("507", "PA"), ("508", "PM"), ("509", "HT"), ("51", "PE"), ("52", "MX"),
    ("53", "CU"), ("54", "AR"), ("55", "BR"), ("56", "CL"), ("57", "CO"), ("58", "VE"),
    ("590", "GP"), ("591", "BO"), ("592", "GY"), ("593", "EC"), ("594", "GF"), ("595", "PY"),
    ("596", "MQ"), ("597", "SR"), ("598", "UY"), ("599", "CW"), ("5993", "BQ"), ("5994", "BQ"),
    ("5997", "BQ"),
    ("60", "MY"), ("61", "AU"), ("6189162", "CC"), ("6189164", "CX"), ("62", "ID"), ("63", "PH"),
    ("64", "NZ"), ("65", "SG"), ("66", "TH"), ("670", "TL"), ("672", "NF"), ("6721", "AQ"),
    ("673", "BN"), ("674", "NR"), ("675", "PG"), ("676", "TO"), ("677", "SB"), ("678", "VU"),
    ("679", "FJ"), ("680", "PW"), ("681", "WF"), ("682", "CK"), ("683", "NU"), ("685", "WS"),
    ("686", "KI"), ("687", "NC"), ("688", "TV"), ("689", "PF"), ("690", "TK"), ("691", "FM"),
    ("692", "MH"),
    ("7", "RU"), ("76", "KZ"), ("77", "KZ"),
    ("81", "JP"), ("82", "KR"), ("84", "VN"), ("850", "KP"), ("852", "HK"), ("853", "MO"),
    ("855", "KH"), ("856", "LA"), ("86", "CN"), ("880", "BD"), ("886", "TW"),
    ("90", "TR"), ("91", "IN"), ("92", "PK"), ("93", "AF"), ("94", "LK"), ("95", "MM"),
    ("960", "MV"), ("961", "LB"), ("962", "JO"), ("963", "SY"), ("964", "IQ"), ("965", "KW"),
    ("966", "SA"), ("967", "YE"), ("968", "OM"), ("970", "PS"), ("971", "AE"), ("972", "IL"),
    ("973", "BH"), ("974", "QA"), ("975", "BT"), ("976", "MN"), ("977", "NP"), ("98", "IR"),
    ("992", "TJ"), ("993", "TM"), ("994", "AZ"), ("995", "GE"), ("996", "KG"), ("998", "UZ"),
];

/// The ISO 3166-1 alpha-2 code of the country `number` belongs to: an E.164 number with
/// or without its `+` (digits only, 7 to 15 of them; NANP numbers exactly 11). `None`
/// for anything else, and for codes that are no country's (non-geographic, unassigned).
pub fn country_of(number: &str) -> Option<&'static str> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    let well_formed = (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
        && (!digits.starts_with('1') || digits.len() == 11);
    if !well_formed {
        return None;
    }
    (1..=MAX_PREFIX).rev().find_map(|len| {
        let prefix = &digits[..len];
        PREFIXES
            .binary_search_by(|(p, _)| p.cmp(&prefix))
            .ok()
            .map(|i| PREFIXES[i].1)
    })
}

/// Whether a number's allow-list admits `country` (the other party's, from
/// [`country_of`]): an absent or empty list admits everyone, even a number of no country;
/// otherwise the country must be listed.
pub fn admits(list: Option<&[String]>, country: Option<&str>) -> bool {
    match list {
        None | Some([]) => true,
        Some(list) => country.is_some_and(|c| list.iter().any(|l| l == c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::number::is_country_code;

    fn check(cases: &[(&str, &str)]) {
        for (number, country) in cases {
            assert_eq!(country_of(number), Some(*country), "{number}");
            // The same without the '+'.
            let bare = number.trim_start_matches('+');
            assert_eq!(country_of(bare), Some(*country), "{bare}");
        }
    }

    #[test]
    fn table_is_sorted_unique_and_names_iso_codes() {
        assert!(
            PREFIXES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no duplicates"
        );
        for (prefix, code) in PREFIXES {
            assert!(is_country_code(code), "{prefix} -> {code}");
            assert!(prefix.bytes().all(|b| b.is_ascii_digit()), "{prefix}");
            assert!((1..=MAX_PREFIX).contains(&prefix.len()), "{prefix}");
        }
    }

    #[test]
    fn ordinary_countries() {
        check(&[
            ("+442071838750", "GB"),
            ("+4930901820", "DE"),
            ("+33142685300", "FR"),
            ("+911123456789", "IN"),
            ("+81312345678", "JP"),
            ("+5511912345678", "BR"),
            ("+61291234567", "AU"),
            ("+27211234567", "ZA"),
            ("+525512345678", "MX"),
            ("+8613812345678", "CN"),
            ("+74951234567", "RU"),
            ("+79161234567", "RU"),
            ("+77012345678", "KZ"),
            ("+76112345678", "KZ"),
            ("+390612345678", "IT"),
            ("+4722123456", "NO"),
            ("+358912345678", "FI"),
            ("+212522123456", "MA"),
            ("+2908001", "SH"),
            ("+262262123456", "RE"),
            ("+590590123456", "GP"),
            ("+59994612345", "CW"),
            ("+6831234", "NU"),
            ("+97143123456", "AE"),
            ("+38640123456", "SI"),
            ("+998901234567", "UZ"),
        ]);
    }

    #[test]
    fn shared_codes_by_their_deciding_digits() {
        check(&[
            ("+441481712345", "GG"),
            ("+447781123456", "GG"),
            ("+447839123456", "GG"),
            ("+447911123456", "GG"),
            ("+441534123456", "JE"),
            ("+447509123456", "JE"),
            ("+447700123456", "JE"),
            ("+447797123456", "JE"),
            ("+447829123456", "JE"),
            ("+447937123456", "JE"),
            ("+441624123456", "IM"),
            ("+447524123456", "IM"),
            ("+447624123456", "IM"),
            ("+447924123456", "IM"),
            ("+447912345678", "GB"),
            ("+390669812345", "VA"),
            ("+4779021234", "SJ"),
            ("+35818123456", "AX"),
            ("+5997151234", "BQ"),
            ("+5993181234", "BQ"),
            ("+5994162345", "BQ"),
            ("+262269601234", "YT"),
            ("+262639123456", "YT"),
            ("+61891621234", "CC"),
            ("+61891641234", "CX"),
            ("+61891671234", "AU"),
        ]);
    }

    #[test]
    fn nanp_by_area_code() {
        check(&[
            ("+14155550100", "US"),
            ("+12125550100", "US"),
            ("+18005550100", "US"),
            ("+18885550100", "US"),
            ("+14165550100", "CA"),
            ("+16045550100", "CA"),
            ("+15145550100", "CA"),
            ("+19425550100", "CA"),
            ("+18795550100", "CA"),
            ("+16005550100", "CA"),
            ("+12425550100", "BS"),
            ("+12465550100", "BB"),
            ("+12645550100", "AI"),
            ("+12685550100", "AG"),
            ("+12845550100", "VG"),
            ("+13405550100", "VI"),
            ("+13455550100", "KY"),
            ("+14415550100", "BM"),
            ("+14735550100", "GD"),
            ("+16495550100", "TC"),
            ("+16585550100", "JM"),
            ("+18765550100", "JM"),
            ("+16645550100", "MS"),
            ("+16705550100", "MP"),
            ("+16715550100", "GU"),
            ("+16845550100", "AS"),
            ("+17215550100", "SX"),
            ("+17585550100", "LC"),
            ("+17675550100", "DM"),
            ("+17845550100", "VC"),
            ("+17875550100", "PR"),
            ("+19395550100", "PR"),
            ("+18095550100", "DO"),
            ("+18295550100", "DO"),
            ("+18495550100", "DO"),
            ("+18685550100", "TT"),
            ("+18695550100", "KN"),
        ]);
        // Every NANP area code in the table resolves to its country in a full number.
        for (prefix, code) in PREFIXES
            .iter()
            .filter(|(p, _)| p.len() == 4 && p.starts_with('1'))
        {
            assert_eq!(country_of(&format!("+{prefix}5550100")), Some(*code));
        }
    }

    #[test]
    fn non_geographic_and_unassigned_codes_are_no_country() {
        for number in [
            "+80012345678",
            "+80812345678",
            "+870773111111",
            "+87812345678",
            "+881612345678",
            "+882341234567",
            "+883510012345",
            "+88812345678",
            "+979123456789",
            "+38344123456",
            "+2101234567",
            "+9991234567",
        ] {
            assert_eq!(country_of(number), None, "{number}");
        }
    }

    #[test]
    fn allow_lists() {
        let ca = ["CA".to_owned()];
        assert!(admits(None, None));
        assert!(admits(Some(&[]), None));
        assert!(admits(Some(&ca), Some("CA")));
        assert!(!admits(Some(&ca), Some("US")));
        assert!(!admits(Some(&ca), None));
    }

    #[test]
    fn garbage_is_no_country() {
        for number in [
            "",
            "+",
            "anonymous",
            "sipp",
            "+44",
            "+442",
            "441234",
            "+1415555010",
            "+141555501000",
            "+1234567890123456",
            "+04420718387",
            "0442071838750",
            "++442071838750",
            "+44 20 7183 8750",
            "+44-2071838750",
            " +442071838750",
            "+４４2071838750",
        ] {
            assert_eq!(country_of(number), None, "{number:?}");
        }
    }
}
