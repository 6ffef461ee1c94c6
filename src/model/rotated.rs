//! What a rotation produced: the new secret (only in memory, on its way into the Secret), its
//! hint and id, and the app as the rotation left it.

use crate::model::crd::OAuthApp;
use crate::model::secret::ClientSecret;

/// The outcome of a rotation: the new secret (shown once, to an API caller) and the app as
/// written.
pub struct Rotated {
    pub secret: ClientSecret,
    pub hint: String,
    pub rotation_id: String,
    pub app: OAuthApp,
}

/// A rotation whose Secret is written and whose status is not (the runtime's `Error::StatusPending`). Its
/// `Debug` names the rotation only, never the secret.
pub struct Written(pub Rotated);

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Written(rotation {})", self.0.rotation_id)
    }
}
