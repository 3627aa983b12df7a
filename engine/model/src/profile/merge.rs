//! Merging an anonymous history into a customer's profile (placeholder, replaced
//! by the full merge).

use super::Profile;

impl Profile {
    /// Merges `other`'s history into this profile.
    pub fn absorb(&mut self, other: &Profile) {
        self.events += other.events;
        for (a, b) in self.channels.iter_mut().zip(other.channels.iter()) {
            a.count += b.count;
            a.last_ms = a.last_ms.max(b.last_ms);
        }
        for p in &other.products {
            for &v in &p.views_ms {
                self.product(&p.sku, v).push_view(v);
            }
        }
        if other.id != self.id && !self.anonymous_ids.contains(&other.id) {
            self.anonymous_ids.push(other.id.clone());
        }
        self.timers.extend(other.timers.iter().cloned());
    }
}
