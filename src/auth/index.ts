/**
 * Client authorization (SMART on FHIR): token verification, scopes, the Patient compartment rule,
 * discovery, open mode. See docs/security.md.
 */
export { AUTH_ERROR_REASONS, AuthError, wwwAuthenticate } from './errors.ts';
export type { AuthErrorReason, BearerErrorCode } from './errors.ts';
export { ASYMMETRIC_ALGORITHMS, AuthConfigSchema, BackendClientSchema, BackendServicesSchema, assertAuthOrInsecureDev, DEFAULT_ALGORITHMS, DEFAULT_CLOCK_SKEW_SECONDS, isLoopbackHost } from './config.ts';
export type { AuthConfig, AuthMode } from './config.ts';
export { checkPublicKeySet, fileKeySet, localKeySet, remoteKeySet } from './keys.ts';
export type { RemoteKeySetOptions } from './keys.ts';
export { bearerToken, MultiIssuerVerifier, TokenVerifier } from './token.ts';
export type { AccessContext, TokenVerifierOptions } from './token.ts';
export { checkScope, parseScope, parseScopes, permissionsFor } from './scopes.ts';
export type { ClinicalScope, Interaction, Permission, ScopeContext, ScopeDecision, ScopeSet } from './scopes.ts';
export { compartmentSearchParams, constrainSearchToPatient, filterBundleEntries, inPatientCompartment, isPatientCompartmentType, PATIENT_SHARED_TYPES, patientCompartmentParams } from './compartment.ts';
export type { CompartmentOptions } from './compartment.ts';
export { classifyFhirRequest } from './request.ts';
export type { FhirRequestInfo } from './request.ts';
export { authorizeInteraction, canSee, requirePermissions } from './authorize.ts';
export type { AuthorizeInput, AuthorizeResult, CurrentResource, InteractionInfo } from './authorize.ts';
export { currentFromService, sendAuthError, smartAuth } from './middleware.ts';
export type { AuthDecisionEvent, SmartAuthOptions } from './middleware.ts';
export { smartConfiguration, smartConfigurationHandler } from './smart-configuration.ts';
export type { SmartConfigurationInput } from './smart-configuration.ts';
export { JWT_BEARER_ASSERTION, OAuthError, TokenIssuer, tokenEndpointHandler } from './token-endpoint.ts';
export type { BackendClient, TokenIssuerOptions, TokenResponse } from './token-endpoint.ts';
export { createAuth } from './setup.ts';
export type { AuthSetup, CreateAuthOptions } from './setup.ts';
