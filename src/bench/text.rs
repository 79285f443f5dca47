//! Synthetic memories and queries for the benchmarks: shaped like memories
//! (a subject, an activity, a place, a time), drawn from word lists by a
//! seeded generator, so runs repeat and keyword search has realistic selectivity.

/// Seeded xorshift text generator.
pub struct Generator(u64);

const SUBJECTS: &[&str] = &[
    "I",
    "My sister",
    "My brother",
    "My partner",
    "My manager",
    "My friend Ana",
    "My son",
    "My daughter",
    "Our team",
    "My neighbour",
    "My doctor",
    "My colleague Raj",
];
const VERBS: &[&str] = &[
    "likes",
    "prefers",
    "avoids",
    "booked",
    "visited",
    "is learning",
    "wants to try",
    "recommended",
    "hates",
    "plans to buy",
    "reads about",
    "collects",
    "cooks",
    "orders",
];
const OBJECTS: &[&str] = &[
    "espresso",
    "green tea",
    "sushi",
    "vegan ramen",
    "window seats",
    "aisle seats",
    "jazz",
    "hiking boots",
    "sci-fi novels",
    "board games",
    "sourdough",
    "tapas",
    "yoga",
    "chess",
    "oat milk",
    "red wine",
    "cycling",
    "photography",
    "pottery",
    "salsa dancing",
    "kayaking",
    "podcasts",
    "vinyl records",
    "dim sum",
    "croissants",
    "spicy curry",
    "gluten-free pasta",
    "electric cars",
    "mechanical keyboards",
    "houseplants",
    "running shoes",
    "Rust",
    "Python",
    "watercolours",
    "climbing",
    "surfing",
    "birdwatching",
    "opera",
    "karaoke",
];
const PLACES: &[&str] = &[
    "Lisbon",
    "Porto",
    "Tokyo",
    "Kyoto",
    "Berlin",
    "Paris",
    "Madrid",
    "Oslo",
    "Seattle",
    "Toronto",
    "Nairobi",
    "Lima",
    "Sydney",
    "Hanoi",
    "Istanbul",
    "Reykjavik",
    "Dublin",
    "Prague",
    "Vienna",
    "Cape Town",
    "Mexico City",
    "Buenos Aires",
    "Seoul",
    "Mumbai",
];
const TIMES: &[&str] = &[
    "on weekends",
    "every morning",
    "in winter",
    "in summer",
    "after work",
    "on Fridays",
    "during holidays",
    "at night",
    "before meetings",
    "on business trips",
    "most evenings",
];

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[(self.next() % list.len() as u64) as usize]
    }

    pub fn memory(&mut self) -> String {
        let n = self.next() % 10_000;
        format!(
            "{} {} {} in {} {} (note {n})",
            self.pick(SUBJECTS),
            self.pick(VERBS),
            self.pick(OBJECTS),
            self.pick(PLACES),
            self.pick(TIMES),
        )
    }

    pub fn query(&mut self) -> String {
        match self.next() % 3 {
            0 => format!("what does the user think of {}", self.pick(OBJECTS)),
            1 => format!("{} in {}", self.pick(OBJECTS), self.pick(PLACES)),
            _ => format!(
                "{} {} {}",
                self.pick(VERBS),
                self.pick(OBJECTS),
                self.pick(TIMES)
            ),
        }
    }
}
